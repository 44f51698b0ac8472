// go-spiffe-check loads an X.509-SVID exactly as a SPIFFE workload would
// (x509svid.Load: certificate chain PEM + PKCS#8 key PEM) and verifies it
// against an X.509 bundle (x509bundle.Load) with x509svid.Verify. It prints
// one JSON line describing the SVID, or exits 1 with the library's error.
//
// Usage: go-spiffe-check -cert svid.pem -key svid_key.pem -bundle bundle.pem
//
//	-trust-domain custody.local [-time 2026-01-02T03:04:05Z]
package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const delegationOID = "1.2.840.113556.1.8000.2554.42073.11384.20503.17875.36802.12870958.1413218.1.1"

type result struct {
	SpiffeID            string `json:"spiffeId"`
	Chains              int    `json:"chains"`
	ChainLength         int    `json:"chainLength"`
	DelegationExtension string `json:"delegationExtension"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	certPath := flag.String("cert", "", "SVID certificate chain PEM")
	keyPath := flag.String("key", "", "SVID private key PEM (PKCS#8)")
	bundlePath := flag.String("bundle", "", "X.509 bundle PEM")
	trustDomain := flag.String("trust-domain", "", "trust domain of the bundle")
	at := flag.String("time", "", "verification time (RFC 3339); default now")
	flag.Parse()

	svid, err := x509svid.Load(*certPath, *keyPath)
	if err != nil {
		fail("load: %v", err)
	}
	td, err := spiffeid.TrustDomainFromString(*trustDomain)
	if err != nil {
		fail("trust domain: %v", err)
	}
	bundle, err := x509bundle.Load(td, *bundlePath)
	if err != nil {
		fail("bundle: %v", err)
	}
	var opts []x509svid.VerifyOption
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			fail("time: %v", err)
		}
		opts = append(opts, x509svid.WithTime(t))
	}
	id, chains, err := x509svid.Verify(svid.Certificates, bundle, opts...)
	if err != nil {
		fail("verify: %v", err)
	}
	if id != svid.ID {
		fail("verify returned %s but Load parsed %s", id, svid.ID)
	}
	out := result{SpiffeID: id.String(), Chains: len(chains), ChainLength: len(chains[0])}
	for _, ext := range svid.Certificates[0].Extensions {
		if ext.Id.String() == delegationOID {
			out.DelegationExtension = hex.EncodeToString(ext.Value)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("output: %v", err)
	}
}
