// Verifies Custodian's ledger output with Go's golang.org/x/mod/sumdb/note and sumdb/tlog: code
// nobody on this project wrote, and the reference that Tessera, the Go checksum database and
// witnesses build on. Run by tests/e2e/interop.rs as
//
//	sumdb-verify DIR
//
// where DIR holds: vkey (the log's verifier key), receipt.json (a Custodian receipt),
// old.checkpoint and new.checkpoint (signed checkpoints) and consistency (the consistency proof
// between them, one base64 hash per line). It prints "ok" or exits 1 with the reason.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// open verifies a signed checkpoint with note.Open and parses its C2SP tlog-checkpoint body.
func open(msg []byte, verifiers note.Verifiers) checkpoint {
	n, err := note.Open(msg, verifiers)
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		fail("checkpoint body has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size %q: %v", lines[1], err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		fail("checkpoint root %q: %v", lines[2], err)
	}
	return checkpoint{origin: lines[0], size: size, root: root}
}

func hashes(list []string) []tlog.Hash {
	var out []tlog.Hash
	for _, s := range list {
		h, err := tlog.ParseHash(s)
		if err != nil {
			fail("hash %q: %v", s, err)
		}
		out = append(out, h)
	}
	return out
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: verify DIR")
	}
	dir := os.Args[1]
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			fail("%v", err)
		}
		return b
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(read("vkey"))))
	if err != nil {
		fail("note.NewVerifier: %v", err)
	}
	verifiers := note.VerifierList(verifier)

	var receipt struct {
		LogIndex       int64    `json:"log_index"`
		Entry          string   `json:"entry"`
		InclusionProof []string `json:"inclusion_proof"`
		Checkpoint     string   `json:"checkpoint"`
	}
	if err := json.Unmarshal(read("receipt.json"), &receipt); err != nil {
		fail("receipt.json: %v", err)
	}
	cp := open([]byte(receipt.Checkpoint), verifiers)
	if cp.origin != verifier.Name() {
		fail("origin %q is not the key name %q", cp.origin, verifier.Name())
	}
	entry, err := base64.StdEncoding.DecodeString(receipt.Entry)
	if err != nil {
		fail("entry: %v", err)
	}
	leaf := tlog.RecordHash(entry)
	if err := tlog.CheckRecord(hashes(receipt.InclusionProof), cp.size, cp.root, receipt.LogIndex, leaf); err != nil {
		fail("tlog.CheckRecord of entry %d at size %d: %v", receipt.LogIndex, cp.size, err)
	}

	oldCp := open(read("old.checkpoint"), verifiers)
	newCp := open(read("new.checkpoint"), verifiers)
	var proof []string
	for _, line := range bytes.Split(bytes.TrimSpace(read("consistency")), []byte("\n")) {
		if len(line) > 0 {
			proof = append(proof, string(line))
		}
	}
	if err := tlog.CheckTree(hashes(proof), newCp.size, newCp.root, oldCp.size, oldCp.root); err != nil {
		fail("tlog.CheckTree %d -> %d: %v", oldCp.size, newCp.size, err)
	}
	fmt.Printf("ok: note.Open verified %s; tlog.CheckRecord verified entry %d in size %d; tlog.CheckTree verified %d -> %d\n",
		verifier.Name(), receipt.LogIndex, cp.size, oldCp.size, newCp.size)
}
