// Command etcd is the etcd server from the go.etcd.io module graph that
// k8s.io/kubernetes already pins, so the local control plane needs no
// separate download (Debian's etcd is too old for kube-apiserver >= 1.35).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
