module custody.dev/test/conformance/go-spiffe

go 1.26.0

require github.com/spiffe/go-spiffe/v2 v2.9.0
