package graceful

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestMetaEncoding checks the encoding of Metas of every size that
// appendBinary treats apart (up to 4 pairs, up to 16, more) and of lengths
// that take more than a byte, against the encoding written the plain way,
// and that each decodes back, by every way in.
func TestMetaEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return string(b)
	}
	for _, pairs := range []int{1, 2, 3, 4, 5, 16, 17, 40, 200} {
		for _, long := range []int{0, 127, 128, 300, 20000} {
			m := make(Meta, pairs)
			for len(m) < pairs {
				// Keys that share prefixes, and an empty one, so that
				// the order is decided past the first byte.
				k := strings.Repeat("k", rng.IntN(3)) + str(rng.IntN(4))
				m[k] = str(rng.IntN(10))
			}
			for k := range m {
				if long > 0 {
					m[k] = str(long)
					break
				}
			}
			t.Run(fmt.Sprintf("pairs=%d/long=%d", pairs, long), func(t *testing.T) {
				want := plainMetaEncoding(m)
				prefix := []byte("prefix")
				if got := m.appendBinary(bytes.Clone(prefix)); !bytes.Equal(got, append(prefix, want...)) {
					t.Fatalf("appendBinary: %x; want %x", got, want)
				}
				var b bytes.Buffer
				if n, err := m.WriteTo(&b); err != nil || n != int64(len(want)) || !bytes.Equal(b.Bytes(), want) {
					t.Fatalf("WriteTo: %d, %v, %x; want %x", n, err, b.Bytes(), want)
				}
				var u Meta
				if n, err := u.ReadFrom(bytes.NewReader(want)); err != nil || n != int64(len(want)) || !maps.Equal(u, m) {
					t.Fatalf("ReadFrom: %d, %v, %q", n, err, u)
				}
				strs := metaStrings{body: want}
				for _, r := range []*metaReader{{b: want}, {b: want, strs: &strs}} {
					d, err := MetaFrom(r)
					if err != nil || !maps.Equal(d, m) {
						t.Fatalf("MetaFrom: %v, %q", err, d)
					}
				}
			})
		}
	}
}

// plainMetaEncoding encodes m as the Protocol section of the README says.
func plainMetaEncoding(m Meta) []byte {
	b := []byte{metaVersion}
	b = binary.AppendUvarint(b, uint64(len(m)))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(m[k])))
		b = append(b, m[k]...)
	}
	return b
}
