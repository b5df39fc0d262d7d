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
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"custodian.test/interop/internal/checkpoint"
)

func get(url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		checkpoint.Fail("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		checkpoint.Fail("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 {
		checkpoint.Fail("GET %s: %s: %s", url, resp.Status, body)
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
		checkpoint.Fail("usage: tiles BASE DIR")
	}
	base, dir := os.Args[1], os.Args[2]
	read, verifier := checkpoint.Inputs(dir)
	verifiers := note.VerifierList(verifier)
	cp := checkpoint.Open(get(base+"/log/checkpoint"), verifiers)
	source := &tiles{base: base}
	reader := tlog.TileHashReader(tlog.Tree{N: cp.Size, Hash: cp.Root}, source)
	root, err := tlog.TreeHash(cp.Size, reader)
	if err != nil {
		checkpoint.Fail("tlog.TreeHash(%d) from tiles: %v", cp.Size, err)
	}
	if root != cp.Root {
		checkpoint.Fail("tlog.TreeHash(%d) from tiles is %v, the checkpoint says %v", cp.Size, root, cp.Root)
	}
	records := 0
	for _, line := range bytes.Split(bytes.TrimSpace(read("records")), []byte("\n")) {
		fields := strings.Fields(string(line))
		if len(fields) != 2 {
			checkpoint.Fail("records line %q", line)
		}
		index, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			checkpoint.Fail("records index %q: %v", fields[0], err)
		}
		entry, err := base64.StdEncoding.DecodeString(fields[1])
		if err != nil {
			checkpoint.Fail("records entry %d: %v", index, err)
		}
		proof, err := tlog.ProveRecord(cp.Size, index, reader)
		if err != nil {
			checkpoint.Fail("tlog.ProveRecord(%d, %d) from tiles: %v", cp.Size, index, err)
		}
		if err := tlog.CheckRecord(proof, cp.Size, cp.Root, index, tlog.RecordHash(entry)); err != nil {
			checkpoint.Fail("tlog.CheckRecord of entry %d at size %d: %v", index, cp.Size, err)
		}
		records++
	}
	old := checkpoint.Open(read("old.checkpoint"), verifiers)
	proof, err := tlog.ProveTree(cp.Size, old.Size, reader)
	if err != nil {
		checkpoint.Fail("tlog.ProveTree(%d, %d) from tiles: %v", cp.Size, old.Size, err)
	}
	if err := tlog.CheckTree(proof, cp.Size, cp.Root, old.Size, old.Root); err != nil {
		checkpoint.Fail("tlog.CheckTree %d -> %d: %v", old.Size, cp.Size, err)
	}
	fmt.Printf("ok: tlog.TreeHash(%d) from %d tiles equals the signed root; %d records proved and checked; tree %d -> %d proved and checked\n",
		cp.Size, source.fetched, records, old.Size, cp.Size)
}
