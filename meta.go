package graceful

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Meta is a set of key-value pairs to send with a descriptor. It implements
// [io.WriterTo], so it can be passed as the meta of any Send or Handler
// function, and the receiver decodes it with [MetaFrom].
//
// Its encoding is compact, versioned and deterministic: a version byte (1),
// the number of pairs as a uvarint, then each pair in increasing key order as
// a uvarint-prefixed key and a uvarint-prefixed value. An empty Meta encodes
// as zero bytes, so its receiver gets a nil meta. Decoding accepts only that
// canonical form and allocates no more than the input's size.
type Meta map[string]string

const metaVersion = 1

// defaultMaxMetaSize bounds the meta of one descriptor on the receiving
// side when Client.MaxMetaSize is 0.
const defaultMaxMetaSize = 64 << 10

// appendBinary appends the encoding of m to b. Senders use it to encode
// without allocating.
func (m Meta) appendBinary(b []byte) []byte {
	if len(m) == 0 {
		return b
	}
	if len(m) > 4 {
		var stack [16]metaPair
		return m.appendPairs(b, stack[:0])
	}
	// A sender encodes a meta per descriptor, most of a few pairs. They
	// are sorted into a local array as they come, in one pass over the
	// map, which takes neither the calls of a sort nor write barriers.
	var pairs [4]metaPair
	n, size := 0, 2
	for k, v := range m {
		i := n
		for ; i > 0 && keyLess(k, pairs[i-1].k); i-- {
			pairs[i] = pairs[i-1]
		}
		pairs[i] = metaPair{k, v}
		n++
		size += 2 + len(k) + len(v)
	}
	return appendSorted(slices.Grow(b, size), pairs[:n])
}

// appendPairs appends the encoding of m, gathering its pairs in pairs.
func (m Meta) appendPairs(b []byte, pairs []metaPair) []byte {
	// The size, counting lengths of one byte: room for a whole meta
	// almost always, in one allocation for WriteTo.
	size := 2
	for k, v := range m {
		pairs = append(pairs, metaPair{k, v})
		size += 2 + len(k) + len(v)
	}
	if len(pairs) <= 16 {
		// An insertion sort spares the calls of a general one.
		for i := 1; i < len(pairs); i++ {
			for j := i; j > 0 && keyLess(pairs[j].k, pairs[j-1].k); j-- {
				pairs[j], pairs[j-1] = pairs[j-1], pairs[j]
			}
		}
	} else {
		slices.SortFunc(pairs, func(a, b metaPair) int { return strings.Compare(a.k, b.k) })
	}
	return appendSorted(slices.Grow(b, size), pairs)
}

// appendSorted appends the encoding of the pairs, sorted by key.
func appendSorted(b []byte, pairs []metaPair) []byte {
	b = append(b, metaVersion)
	b = appendUvarint(b, len(pairs))
	for i := range pairs {
		p := &pairs[i]
		b = appendUvarint(b, len(p.k))
		b = append(b, p.k...)
		b = appendUvarint(b, len(p.v))
		b = append(b, p.v...)
	}
	return b
}

// appendUvarint appends x as a uvarint, a length below 0x80 as one byte
// without a loop.
func appendUvarint(b []byte, x int) []byte {
	if x < 0x80 {
		return append(b, byte(x))
	}
	return binary.AppendUvarint(b, uint64(x))
}

type metaPair struct{ k, v string }

// keyLess reports whether a < b. Keys mostly differ in their first byte,
// which it compares before it calls the runtime's comparison.
func keyLess(a, b string) bool {
	if a != "" && b != "" && a[0] != b[0] {
		return a[0] < b[0]
	}
	return a < b
}

// WriteTo writes the encoding of m to w, in one Write.
func (m Meta) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(m.appendBinary(nil))
	return int64(n), err
}

// ReadFrom reads r to its end and replaces the contents of *m with the
// pairs decoded from it. It blocks as long as r does. Like [io.ReadAll],
// it reads as much as r yields: bound a reader you do not trust with
// [io.LimitReader]. On error *m is unchanged. A malformed encoding is an
// error that matches [ErrProtocol].
func (m *Meta) ReadFrom(r io.Reader) (int64, error) {
	if m == nil {
		return 0, errors.New("graceful: ReadFrom into a nil *Meta")
	}
	b, err := readMeta(r)
	if err != nil {
		return int64(len(b)), err
	}
	d, err := decodeMeta(b)
	if err != nil {
		return int64(len(b)), err
	}
	*m = d
	return int64(len(b)), nil
}

// MetaFrom decodes a Meta from the meta reader that a Receive callback
// gets, or from any reader, which it reads to its end. The callback's
// reader holds at most [Client.MaxMetaSize] bytes. Bound another reader
// you do not trust with [io.LimitReader]. A nil reader gives a nil Meta,
// which reads as empty. A malformed encoding is an error that matches
// [ErrProtocol]. From a callback's reader, the Metas of descriptors that
// arrived together share the memory of their strings, in chunks of a few
// KiB. Decoding then costs the allocations of the map alone, and a Meta
// kept alive keeps its chunk.
func MetaFrom(r io.Reader) (Meta, error) {
	if r == nil {
		return nil, nil
	}
	if mr, ok := r.(*metaReader); ok {
		return mr.decodeMeta()
	}
	b, err := readMeta(r)
	if err != nil {
		return nil, err
	}
	return decodeMeta(b)
}

func readMeta(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return b, fmt.Errorf("graceful: reading meta: %w", err)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return nil, nil
	}
	// One string holds every key and value, so decoding costs one
	// allocation for the bytes and those of the map.
	return decodeMetaString(string(b))
}

// decodeMetaString decodes the encoding s, whose keys and values become
// substrings of s.
func decodeMetaString(s string) (Meta, error) {
	if len(s) == 0 {
		return nil, nil
	}
	n, p, err := metaHeader(s)
	if err != nil {
		return nil, err
	}
	// Up to a group's 8 slots a size hint allocates nothing: the cheaper
	// make without one does the same.
	var m Meta
	if n <= 8 {
		m = make(Meta)
	} else {
		m = make(Meta, n)
	}
	var k, v, prev string
	for i := uint64(0); i < n; i++ {
		// Lengths below 0x80, as almost all are, without a call.
		if q := shortPair(s, p); q > 0 {
			k, v, p = s[p+1:q], s[q+1:q+1+int(s[q])], q+1+int(s[q])
		} else if k, v, p, err = readMetaPair(s, p); err != nil {
			return nil, err
		}
		if i > 0 && !keyLess(prev, k) {
			return nil, fmt.Errorf("%w: meta keys not in increasing order", ErrProtocol)
		}
		m[k], prev = v, k
	}
	if p != len(s) {
		return nil, fmt.Errorf("%w: %d bytes after meta", ErrProtocol, len(s)-p)
	}
	return m, nil
}

// metaHeader reads the version and the number of pairs of the encoding s,
// and returns the number and the offset of the first pair.
func metaHeader(s string) (n uint64, p int, err error) {
	if s[0] != metaVersion {
		return 0, 0, fmt.Errorf("%w: meta version %d, want %d", ErrProtocol, s[0], metaVersion)
	}
	// A receiver decodes a meta per descriptor: lengths below 0x80, as of
	// almost any count, key and value, are read here without a call.
	n, p = 0, 2
	if len(s) > 1 && s[1] < 0x80 {
		n = uint64(s[1])
	} else if n, p, err = metaUvarint(s, 1); err != nil {
		return 0, 0, err
	}
	// An empty Meta encodes as zero bytes, not as a count of 0.
	if n == 0 {
		return 0, 0, fmt.Errorf("%w: meta of no pairs", ErrProtocol)
	}
	// Each pair takes at least two bytes, which bounds the map's size hint.
	if n > uint64(len(s)-p)/2 {
		return 0, 0, fmt.Errorf("%w: meta announces %d pairs in %d bytes", ErrProtocol, n, len(s)-1)
	}
	return n, p, nil
}

// shortPair returns the offset of the value's length of the pair at p, if
// both its lengths are below 0x80 and within s, else 0.
func shortPair(s string, p int) int {
	if p < len(s) && s[p] < 0x80 {
		if q := p + 1 + int(s[p]); q < len(s) && s[q] < 0x80 && int(s[q]) < len(s)-q {
			return q
		}
	}
	return 0
}

// readMetaPair reads the pair at offset p of s, and returns it with the
// offset of the next.
func readMetaPair(s string, p int) (k, v string, next int, err error) {
	if k, p, err = metaString(s, p); err != nil {
		return "", "", p, err
	}
	v, p, err = metaString(s, p)
	return k, v, p, err
}

func metaUvarint(s string, p int) (uint64, int, error) {
	var x uint64
	for shift := uint(0); p < len(s) && shift < 64; shift += 7 {
		c := s[p]
		p++
		x |= uint64(c&0x7f) << shift
		if c < 0x80 {
			// Only the shortest encoding is canonical, and it fits 64 bits.
			if c == 0 && shift > 0 || shift == 63 && c > 1 {
				break
			}
			return x, p, nil
		}
	}
	return 0, p, fmt.Errorf("%w: bad length in meta", ErrProtocol)
}

func metaString(s string, p int) (string, int, error) {
	n, p, err := metaUvarint(s, p)
	if err != nil {
		return "", p, err
	}
	if n > uint64(len(s)-p) {
		return "", p, fmt.Errorf("%w: meta string of %d bytes past the end", ErrProtocol, n)
	}
	return s[p : p+int(n)], p + int(n), nil
}
