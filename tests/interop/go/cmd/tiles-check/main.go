// Reads Custodian's ledger as a C2SP tlog-tiles log with Go's golang.org/x/mod/sumdb/tlog and
// sumdb/note: code nobody on this project wrote. Run by tests/e2e/tiles.rs as
//
//	tiles-check BASE DIR
//
// where BASE is the daemon's REST address (tiles under BASE/log/) and DIR holds: vkey (the log's
// verifier key), old.checkpoint (a signed checkpoint saved earlier) and records (one line per
// sampled entry: its index and its bytes in base64). The program fetches the latest checkpoint
// and opens it with note.Open, reads hashes only through tlog.TileHashReader (which checks every
// tile against the signed tree), recomputes the root with tlog.TreeHash, proves each sampled
// record with tlog.ProveRecord and checks it with tlog.CheckRecord, and proves the old checkpoint
// consistent with tlog.ProveTree and tlog.CheckTree. It prints "ok: …" or exits 1 with the reason.
package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
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
	size int64
	root tlog.Hash
}

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
	return checkpoint{size: size, root: root}
}

func get(url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		fail("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 {
		fail("GET %s: %s: %s", url, resp.Status, body)
	}
	return body
}

// tiles fetches tiles by their C2SP path: Go's Tile.Path is tile/H/L/N[.p/W]; tlog-tiles drops H.
type tiles struct {
	base    string
	fetched int
}

func (t *tiles) Height() int { return 8 }

func (t *tiles) ReadTiles(list []tlog.Tile) ([][]byte, error) {
	var out [][]byte
	for _, tile := range list {
		path := strings.Replace(tile.Path(), "tile/8/", "tile/", 1)
		data := get(t.base + "/log/" + path)
		if len(data) != tile.W*tlog.HashSize {
			return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(data), tile.W*tlog.HashSize)
		}
		t.fetched++
		out = append(out, data)
	}
	return out, nil
}

func (t *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func main() {
	if len(os.Args) != 3 {
		fail("usage: tiles BASE DIR")
	}
	base, dir := os.Args[1], os.Args[2]
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
	cp := open(get(base+"/log/checkpoint"), verifiers)
	source := &tiles{base: base}
	reader := tlog.TileHashReader(tlog.Tree{N: cp.size, Hash: cp.root}, source)
	root, err := tlog.TreeHash(cp.size, reader)
	if err != nil {
		fail("tlog.TreeHash(%d) from tiles: %v", cp.size, err)
	}
	if root != cp.root {
		fail("tlog.TreeHash(%d) from tiles is %v, the checkpoint says %v", cp.size, root, cp.root)
	}
	records := 0
	for _, line := range bytes.Split(bytes.TrimSpace(read("records")), []byte("\n")) {
		fields := strings.Fields(string(line))
		if len(fields) != 2 {
			fail("records line %q", line)
		}
		index, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			fail("records index %q: %v", fields[0], err)
		}
		entry, err := base64.StdEncoding.DecodeString(fields[1])
		if err != nil {
			fail("records entry %d: %v", index, err)
		}
		proof, err := tlog.ProveRecord(cp.size, index, reader)
		if err != nil {
			fail("tlog.ProveRecord(%d, %d) from tiles: %v", cp.size, index, err)
		}
		if err := tlog.CheckRecord(proof, cp.size, cp.root, index, tlog.RecordHash(entry)); err != nil {
			fail("tlog.CheckRecord of entry %d at size %d: %v", index, cp.size, err)
		}
		records++
	}
	old := open(read("old.checkpoint"), verifiers)
	proof, err := tlog.ProveTree(cp.size, old.size, reader)
	if err != nil {
		fail("tlog.ProveTree(%d, %d) from tiles: %v", cp.size, old.size, err)
	}
	if err := tlog.CheckTree(proof, cp.size, cp.root, old.size, old.root); err != nil {
		fail("tlog.CheckTree %d -> %d: %v", old.size, cp.size, err)
	}
	fmt.Printf("ok: tlog.TreeHash(%d) from %d tiles equals the signed root; %d records proved and checked; tree %d -> %d proved and checked\n",
		cp.size, source.fetched, records, old.size, cp.size)
}
