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

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"custodian.test/interop/internal/checkpoint"
)

func hashes(list []string) []tlog.Hash {
	var out []tlog.Hash
	for _, s := range list {
		h, err := tlog.ParseHash(s)
		if err != nil {
			checkpoint.Fail("hash %q: %v", s, err)
		}
		out = append(out, h)
	}
	return out
}

func main() {
	if len(os.Args) != 2 {
		checkpoint.Fail("usage: verify DIR")
	}
	dir := os.Args[1]
	read, verifier := checkpoint.Inputs(dir)
	verifiers := note.VerifierList(verifier)

	var receipt struct {
		LogIndex       int64    `json:"log_index"`
		Entry          string   `json:"entry"`
		InclusionProof []string `json:"inclusion_proof"`
		Checkpoint     string   `json:"checkpoint"`
	}
	if err := json.Unmarshal(read("receipt.json"), &receipt); err != nil {
		checkpoint.Fail("receipt.json: %v", err)
	}
	cp := checkpoint.Open([]byte(receipt.Checkpoint), verifiers)
	if cp.Origin != verifier.Name() {
		checkpoint.Fail("origin %q is not the key name %q", cp.Origin, verifier.Name())
	}
	entry, err := base64.StdEncoding.DecodeString(receipt.Entry)
	if err != nil {
		checkpoint.Fail("entry: %v", err)
	}
	leaf := tlog.RecordHash(entry)
	if err := tlog.CheckRecord(hashes(receipt.InclusionProof), cp.Size, cp.Root, receipt.LogIndex, leaf); err != nil {
		checkpoint.Fail("tlog.CheckRecord of entry %d at size %d: %v", receipt.LogIndex, cp.Size, err)
	}

	oldCp := checkpoint.Open(read("old.checkpoint"), verifiers)
	newCp := checkpoint.Open(read("new.checkpoint"), verifiers)
	var proof []string
	for _, line := range bytes.Split(bytes.TrimSpace(read("consistency")), []byte("\n")) {
		if len(line) > 0 {
			proof = append(proof, string(line))
		}
	}
	if err := tlog.CheckTree(hashes(proof), newCp.Size, newCp.Root, oldCp.Size, oldCp.Root); err != nil {
		checkpoint.Fail("tlog.CheckTree %d -> %d: %v", oldCp.Size, newCp.Size, err)
	}
	fmt.Printf("ok: note.Open verified %s; tlog.CheckRecord verified entry %d in size %d; tlog.CheckTree verified %d -> %d\n",
		verifier.Name(), receipt.LogIndex, cp.Size, oldCp.Size, newCp.Size)
}
