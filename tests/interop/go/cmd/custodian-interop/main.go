// Command custodian-interop checks Custodian's log and witness with code nobody here wrote:
// Tessera's client, Tessera's witness-policy evaluation, Tessera's POSIX log, and the
// cosignature verifiers of transparency-dev/formats and golang.org/x/mod/sumdb/note.
//
//	custodian-interop keygen ORIGIN
//	    prints a note signer key and its verifier key, one per line
//	custodian-interop read-log URL LOG_VKEY POLICY_FILE [OLD_CHECKPOINT_FILE]
//	    reads a log through Tessera's HTTP client (checkpoint, tiles and entry bundles), requires
//	    the policy's quorum of cosignatures (Tessera's evaluation), proves inclusion of sampled
//	    entries read from their bundles and consistency with OLD_CHECKPOINT_FILE, and prints the
//	    checkpoint size
//	custodian-interop tessera-log DIR SIGNER_KEY POLICY_FILE N
//	    appends N entries to a Tessera POSIX log in DIR that gathers cosignatures per the policy,
//	    waits for them to be published, checks the published checkpoint's cosignatures and prints
//	    "appended N in S seconds"
//	custodian-interop tessera-bench DIR SIGNER_KEY N WRITERS [POLICY_FILE]
//	    appends N entries from WRITERS concurrent writers to a Tessera POSIX log (with the
//	    policy's witnesses, if given), each awaited until published, and prints
//	    "APPENDS/S P50_MS P99_MS"
//	custodian-interop open-note FILE VKEY...
//	    opens the signed note in FILE with sumdb/note, given every key (a witness's cosignature/v1
//	    keys through transparency-dev/formats), and prints the name of each signature it verified,
//	    one per line; it fails, as note.Open does, on a bad signature from a key it was given
//	custodian-interop serve-dir DIR
//	    serves DIR with net/http's FileServer on a free loopback port and prints the address: the
//	    static file server a log's tiles are measured against
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	f_log "github.com/transparency-dev/formats/log"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "custodian-interop: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: keygen | read-log | tessera-log | tessera-bench | open-note | serve-dir")
	}
	ctx := context.Background()
	switch args := os.Args[2:]; os.Args[1] {
	case "keygen":
		skey, vkey, err := note.GenerateKey(rand.Reader, args[0])
		if err != nil {
			fail("keygen: %v", err)
		}
		fmt.Println(skey)
		fmt.Println(vkey)
	case "read-log":
		old := ""
		if len(args) > 3 {
			old = args[3]
		}
		readLog(ctx, args[0], args[1], args[2], old)
	case "tessera-log":
		n, _ := strconv.Atoi(args[3])
		tesseraLog(ctx, args[0], args[1], args[2], n)
	case "tessera-bench":
		n, _ := strconv.Atoi(args[2])
		writers, _ := strconv.Atoi(args[3])
		policy := ""
		if len(args) > 4 {
			policy = args[4]
		}
		tesseraBench(ctx, args[0], args[1], n, writers, policy)
	case "open-note":
		openNote(args[0], args[1:])
	case "serve-dir":
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail("listen: %v", err)
		}
		fmt.Println(listener.Addr().String())
		if err := http.Serve(listener, http.FileServer(http.Dir(args[0]))); err != nil {
			fail("serve: %v", err)
		}
	default:
		fail("unknown mode %q", os.Args[1])
	}
}

// witnessVerifiers returns a cosignature/v1 verifier for every witness line of a policy file.
func witnessVerifiers(policy []byte) []note.Verifier {
	var out []note.Verifier
	for _, line := range strings.Split(string(policy), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 3 && fields[0] == "witness" {
			v, err := f_note.NewVerifierForCosignatureV1(fields[2])
			if err != nil {
				fail("witness key %q: %v", fields[2], err)
			}
			out = append(out, v)
		}
	}
	return out
}

// openNote opens a signed note with every key given and prints the names it verified.
func openNote(file string, vkeys []string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		fail("%v", err)
	}
	var verifiers []note.Verifier
	for _, vkey := range vkeys {
		v, err := note.NewVerifier(vkey)
		if err != nil {
			v, err = f_note.NewVerifierForCosignatureV1(vkey)
		}
		if err != nil {
			fail("key %q: %v", vkey, err)
		}
		verifiers = append(verifiers, v)
	}
	n, err := note.Open(raw, note.VerifierList(verifiers...))
	if err != nil {
		fail("sumdb/note does not open %s: %v", file, err)
	}
	for _, sig := range n.Sigs {
		fmt.Println(sig.Name)
	}
}

// loadPolicy reads a witness policy file and has Tessera parse it.
func loadPolicy(path string) ([]byte, tessera.WitnessGroup) {
	policy, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	group, err := tessera.NewWitnessGroupFromPolicy(policy)
	if err != nil {
		fail("Tessera refuses the policy %s: %v", path, err)
	}
	return policy, group
}

func readLog(ctx context.Context, logURL, logVKey, policyFile, oldFile string) {
	policy, group := loadPolicy(policyFile)
	logV, err := note.NewVerifier(logVKey)
	if err != nil {
		fail("log key: %v", err)
	}
	root, err := url.Parse(strings.TrimSuffix(logURL, "/") + "/")
	if err != nil {
		fail("%v", err)
	}
	fetcher, err := client.NewHTTPFetcher(root, http.DefaultClient)
	if err != nil {
		fail("%v", err)
	}
	cp, raw, _, err := client.FetchCheckpoint(ctx, fetcher.ReadCheckpoint, logV, logV.Name())
	if err != nil {
		fail("Tessera's client refuses the checkpoint: %v", err)
	}
	// Tessera's own policy evaluation, then sumdb/note with the cosignature verifiers.
	if !group.Satisfied(raw) {
		fail("Tessera's witness policy is not satisfied by the checkpoint:\n%s", raw)
	}
	witnesses := witnessVerifiers(policy)
	verifiers := append([]note.Verifier{logV}, witnesses...)
	n, err := note.Open(raw, note.VerifierList(verifiers...))
	if err != nil {
		fail("sumdb/note does not open the checkpoint: %v", err)
	}
	if len(witnesses) > 0 && len(n.Sigs) < 2 {
		fail("sumdb/note verified %d signatures; expected the log's and at least one cosignature", len(n.Sigs))
	}
	// Inclusion of sampled leaves, with leaf hashes from the level-0 tiles.
	builder, err := client.NewProofBuilder(ctx, cp.Size, fetcher.ReadTile)
	if err != nil {
		fail("%v", err)
	}
	for _, index := range []uint64{0, cp.Size / 2, cp.Size - 1} {
		leaves, err := client.FetchLeafHashes(ctx, fetcher.ReadTile, index, 1, cp.Size)
		if err != nil {
			fail("leaf hash %d: %v", index, err)
		}
		p, err := builder.InclusionProof(ctx, index)
		if err != nil {
			fail("inclusion proof %d: %v", index, err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, cp.Size, leaves[0], p, cp.Hash); err != nil {
			fail("inclusion of %d in %d does not verify: %v", index, cp.Size, err)
		}
		// The entry itself, from its bundle through Tessera's client, hashes to that leaf.
		bundle, err := client.GetEntryBundle(ctx, fetcher.ReadEntryBundle, index/256, cp.Size)
		if err != nil {
			fail("entry bundle of %d: %v", index, err)
		}
		entry := bundle.Entries[index%256]
		if got := rfc6962.DefaultHasher.HashLeaf(entry); !bytes.Equal(got, leaves[0]) {
			fail("entry %d from its bundle hashes to %x, the tiles say %x", index, got, leaves[0])
		}
	}
	if oldFile != "" {
		oldRaw, err := os.ReadFile(oldFile)
		if err != nil {
			fail("%v", err)
		}
		old, _, _, err := f_log.ParseCheckpoint(oldRaw, logV.Name(), logV)
		if err != nil {
			fail("old checkpoint: %v", err)
		}
		p, err := builder.ConsistencyProof(ctx, old.Size, cp.Size)
		if err != nil {
			fail("consistency proof: %v", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, cp.Size, p, old.Hash, cp.Hash); err != nil {
			fail("%d -> %d is not consistent: %v", old.Size, cp.Size, err)
		}
	}
	fmt.Println(cp.Size)
}

func appender(ctx context.Context, dir, signerKey string, opts *tessera.AppendOptions) (*tessera.Appender, func(context.Context) error, tessera.LogReader) {
	signer, err := note.NewSigner(signerKey)
	if err != nil {
		fail("signer key: %v", err)
	}
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		fail("POSIX storage: %v", err)
	}
	a, shutdown, reader, err := tessera.NewAppender(ctx, driver, opts.WithCheckpointSigner(signer))
	if err != nil {
		fail("appender: %v", err)
	}
	return a, shutdown, reader
}

func tesseraLog(ctx context.Context, dir, signerKey, policyFile string, n int) {
	policy, group := loadPolicy(policyFile)
	opts := tessera.NewAppendOptions().
		WithBatching(uint(n), 50*time.Millisecond).
		WithCheckpointInterval(100*time.Millisecond).
		WithWitnesses(group, &tessera.WitnessOptions{Timeout: 10 * time.Second})
	a, shutdown, reader := appender(ctx, dir, signerKey, opts)
	await := tessera.NewPublicationAwaiter(ctx, reader.ReadCheckpoint, 50*time.Millisecond)
	start := time.Now()
	futures := make([]tessera.IndexFuture, n)
	for i := range futures {
		futures[i] = a.Add(ctx, tessera.NewEntry([]byte(fmt.Sprintf("tessera entry %d", i))))
	}
	var last []byte
	for _, f := range futures {
		_, cp, err := await.Await(ctx, f)
		if err != nil {
			fail("await: %v", err)
		}
		last = cp
	}
	elapsed := time.Since(start)
	if err := shutdown(ctx); err != nil {
		fail("shutdown: %v", err)
	}
	// The published checkpoint carries the witnesses' cosignatures, checked by Tessera's policy
	// evaluation and by the formats package's cosignature verifier through sumdb/note.
	if !group.Satisfied(last) {
		fail("the published checkpoint does not satisfy the policy:\n%s", last)
	}
	witnesses := witnessVerifiers(policy)
	if _, err := note.Open(last, note.VerifierList(witnesses...)); err != nil {
		fail("no witness cosignature verifies on %q: %v", last, err)
	}
	if !bytes.Contains(last, []byte("\n\u2014 ")) {
		fail("no signature lines")
	}
	fmt.Printf("appended %d in %.3f seconds\n", n, elapsed.Seconds())
}

func tesseraBench(ctx context.Context, dir, signerKey string, n, writers int, policyFile string) {
	// Tessera's floor: it refuses checkpoint intervals under 100 ms.
	opts := tessera.NewAppendOptions().
		WithBatching(uint(writers), 10*time.Millisecond).
		WithCheckpointInterval(100 * time.Millisecond)
	if policyFile != "" {
		_, group := loadPolicy(policyFile)
		opts.WithWitnesses(group, &tessera.WitnessOptions{Timeout: 10 * time.Second})
	}
	a, shutdown, reader := appender(ctx, dir, signerKey, opts)
	await := tessera.NewPublicationAwaiter(ctx, reader.ReadCheckpoint, 10*time.Millisecond)
	results := make(chan []time.Duration, writers)
	start := time.Now()
	for w := 0; w < writers; w++ {
		go func(w int) {
			var mine []time.Duration
			for i := w; i < n; i += writers {
				t := time.Now()
				if _, _, err := await.Await(ctx, a.Add(ctx, tessera.NewEntry([]byte(fmt.Sprintf("bench entry %d", i))))); err != nil {
					fail("await: %v", err)
				}
				mine = append(mine, time.Since(t))
			}
			results <- mine
		}(w)
	}
	var latencies []time.Duration
	for w := 0; w < writers; w++ {
		latencies = append(latencies, <-results...)
	}
	elapsed := time.Since(start)
	if err := shutdown(ctx); err != nil {
		fail("shutdown: %v", err)
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	ms := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	fmt.Printf("%.1f %.2f %.2f\n", float64(n)/elapsed.Seconds(), ms(0.5), ms(0.99))
}
