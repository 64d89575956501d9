package graceful

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"
)

// FuzzMeta decodes arbitrary bytes as a Meta, by every way in: whatever
// decodes must be the canonical encoding of what it decodes to, and anything
// else must fail with a typed error, never a panic.
func FuzzMeta(f *testing.F) {
	for _, m := range []Meta{
		{"name": "app.log"},
		{"": ""},
		{"a": "1", "b": strings.Repeat("x", 200), "c\x00": "\xff"},
	} {
		f.Add(m.appendBinary(nil))
	}
	f.Add([]byte{})
	f.Add([]byte{metaVersion, 0})                       // an empty Meta is zero bytes
	f.Add([]byte{metaVersion, 1, 0x80, 0x00, 0x00})     // a length in two bytes
	f.Add([]byte{metaVersion, 2, 1, 'a', 0, 1, 'a', 0}) // a key twice
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := MetaFrom(bytes.NewReader(b))
		var u Meta
		_, uerr := u.ReadFrom(bytes.NewReader(b))
		// The callback's reader takes another path.
		c, cerr := MetaFrom(&metaReader{b: b})
		if (err == nil) != (uerr == nil) || (err == nil) != (cerr == nil) {
			t.Fatalf("MetaFrom: %v; ReadFrom: %v; from a callback: %v", err, uerr, cerr)
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrLimit) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if !maps.Equal(m, u) || !maps.Equal(m, c) {
			t.Fatalf("decoded %q, %q and %q from the same bytes", m, u, c)
		}
		var enc bytes.Buffer
		if _, err := m.WriteTo(&enc); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc.Bytes(), b) {
			t.Fatalf("%x decodes to %q, whose encoding is %x", b, m, enc.Bytes())
		}
	})
}
