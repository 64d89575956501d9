package graceful_test

import (
	"bytes"
	"fmt"

	"github.com/graceful-go/graceful"
)

func ExampleMeta() {
	b, _ := graceful.Meta{"id": "42", "peer": "10.0.0.1:5000"}.MarshalBinary()
	m, err := graceful.MetaFrom(bytes.NewReader(b))
	fmt.Println(m["id"], m["peer"], err)
	// Output: 42 10.0.0.1:5000 <nil>
}
