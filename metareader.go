package graceful

import "io"

// metaReader is the meta given to a callback. It reads from the receive
// buffer, so [MetaFrom] decodes it without a copy; it is valid only until
// the callback returns.
type metaReader struct {
	b   []byte
	off int
	// strs, if set, holds the frame body that b is part of, at offset at.
	strs *metaStrings
	at   int
}

// metaStrings cuts the strings of the Metas decoded from one frame body out
// of shared copies of the body, chunks of at least metaChunk bytes: a frame
// of small metas then costs a few allocations for their bytes rather than
// one each, which counts in a process that has just started. A Meta kept
// alive keeps its chunk alive, at most metaChunk bytes beyond its own.
type metaStrings struct {
	body []byte
	s    string // a copy of body[at:at+len(s)]
	at   int
}

const metaChunk = 2 << 10

// get returns body[lo:hi] as a string.
func (c *metaStrings) get(lo, hi int) string {
	if lo < c.at || hi > c.at+len(c.s) {
		c.s, c.at = string(c.body[lo:min(len(c.body), max(hi, lo+metaChunk))]), lo
	}
	return c.s[lo-c.at : hi-c.at]
}

// decodeMeta decodes the unread bytes in place, cutting the strings of a
// whole meta from the frame's shared copies.
func (r *metaReader) decodeMeta() (Meta, error) {
	if r.off == 0 && r.strs != nil {
		r.off = len(r.b)
		return decodeMetaString(r.strs.get(r.at, r.at+len(r.b)))
	}
	b := r.b[r.off:]
	r.off = len(r.b)
	return decodeMeta(b)
}

func (r *metaReader) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

// WriteTo lets io.Copy and bytes.Buffer.ReadFrom take the bytes in one call.
func (r *metaReader) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(r.b[r.off:])
	r.off += n
	return int64(n), err
}

// Len reports the unread meta bytes.
func (r *metaReader) Len() int { return len(r.b) - r.off }
