package graceful_test

import (
	"bytes"
	"fmt"

	"github.com/graceful-go/graceful"
)

func ExampleMeta() {
	var b bytes.Buffer
	graceful.Meta{"id": "42", "peer": "10.0.0.1:5000"}.WriteTo(&b)
	m, err := graceful.MetaFrom(&b)
	fmt.Println(m["id"], m["peer"], err)
	// Output: 42 10.0.0.1:5000 <nil>
}
