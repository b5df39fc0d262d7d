// Package checkpoint is what the x/mod checkers share: failing with a message, and opening a
// signed C2SP tlog-checkpoint with x/mod's note.Open and parsing its body.
package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Fail prints the message to standard error and exits 1.
func Fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

// Checkpoint is a parsed checkpoint body.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Open verifies a signed checkpoint with note.Open and parses its C2SP tlog-checkpoint body.
func Open(msg []byte, verifiers note.Verifiers) Checkpoint {
	n, err := note.Open(msg, verifiers)
	if err != nil {
		Fail("note.Open: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		Fail("checkpoint body has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		Fail("checkpoint size %q: %v", lines[1], err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		Fail("checkpoint root %q: %v", lines[2], err)
	}
	return Checkpoint{Origin: lines[0], Size: size, Root: root}
}

// Inputs opens a checker's input directory: a reader of its files (failing on any error) and
// the log's verifier, from its vkey file.
func Inputs(dir string) (func(name string) []byte, note.Verifier) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			Fail("%v", err)
		}
		return b
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(read("vkey"))))
	if err != nil {
		Fail("note.NewVerifier: %v", err)
	}
	return read, verifier
}
