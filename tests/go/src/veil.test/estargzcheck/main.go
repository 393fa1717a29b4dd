// Command estargzcheck drives the reference eStargz / zstd:chunked implementation
// (github.com/containerd/stargz-snapshotter/estargz) for Veil's interoperability tests.
//
//	estargzcheck build IN.tar OUT.blob [--zstdchunked] [--chunk-size N]
//	    Converts a tar into an eStargz (or stargz-snapshotter zstd:chunked) blob with
//	    estargz.Build and prints {"tocDigest","diffID","annotations"} as JSON.
//	estargzcheck verify BLOB TOCDIGEST
//	    Opens the blob with estargz.Open (gzip and zstd:chunked decompressors), checks the
//	    TOC digest with VerifyTOC, reads every regular file fully, verifies every chunk
//	    against its chunk digest, and prints the file list with sha256s as JSON.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

type buildResult struct {
	TOCDigest   string            `json:"tocDigest"`
	DiffID      string            `json:"diffID"`
	Annotations map[string]string `json:"annotations"`
}

type fileResult struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Size     int64  `json:"size"`
	Mode     int64  `json:"mode"`
	LinkName string `json:"linkName,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Chunks   int    `json:"chunks,omitempty"`
}

type verifyResult struct {
	TOCDigest string       `json:"tocDigest"`
	Files     []fileResult `json:"files"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "estargzcheck: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: estargzcheck build IN.tar OUT.blob [--zstdchunked] [--chunk-size N] | verify BLOB TOCDIGEST")
	}
	switch os.Args[1] {
	case "build":
		build(os.Args[2:])
	case "verify":
		verify(os.Args[2:])
	default:
		fail("unknown mode %q", os.Args[1])
	}
}

func build(args []string) {
	if len(args) < 2 {
		fail("build needs IN.tar OUT.blob")
	}
	in, out := args[0], args[1]
	var opts []estargz.Option
	annotations := map[string]string{}
	for i := 2; i < len(args); i++ {
		switch args[i] {
		case "--zstdchunked":
			opts = append(opts, estargz.WithCompression(&zstdCompression{
				&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: annotations},
				&zstdchunked.Decompressor{},
			}))
		case "--chunk-size":
			i++
			if i >= len(args) {
				fail("--chunk-size needs a value")
			}
			n, err := strconv.Atoi(args[i])
			if err != nil {
				fail("bad chunk size %q: %v", args[i], err)
			}
			opts = append(opts, estargz.WithChunkSize(n))
		default:
			fail("unknown build flag %q", args[i])
		}
	}
	f, err := os.Open(in)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		fail("estargz.Build: %v", err)
	}
	defer blob.Close()
	o, err := os.Create(out)
	if err != nil {
		fail("%v", err)
	}
	if _, err := io.Copy(o, blob); err != nil {
		fail("writing %s: %v", out, err)
	}
	if err := o.Close(); err != nil {
		fail("closing %s: %v", out, err)
	}
	res := buildResult{
		TOCDigest:   blob.TOCDigest().String(),
		DiffID:      blob.DiffID().String(),
		Annotations: annotations,
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fail("%v", err)
	}
}

func verify(args []string) {
	if len(args) != 2 {
		fail("verify needs BLOB TOCDIGEST")
	}
	f, err := os.Open(args[0])
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fail("%v", err)
	}
	sr := io.NewSectionReader(f, 0, st.Size())
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		fail("estargz.Open: %v", err)
	}
	want, err := digest.Parse(args[1])
	if err != nil {
		fail("bad TOC digest %q: %v", args[1], err)
	}
	v, err := r.VerifyTOC(want)
	if err != nil {
		fail("VerifyTOC: %v", err)
	}
	res := verifyResult{TOCDigest: r.TOCDigest().String()}
	root, ok := r.Lookup("")
	if !ok {
		fail("no root directory in the TOC")
	}
	walk(r, v, "", root, &res.Files)
	sort.Slice(res.Files, func(i, j int) bool { return res.Files[i].Name < res.Files[j].Name })
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fail("%v", err)
	}
}

func walk(r *estargz.Reader, v estargz.TOCEntryVerifier, dir string, e *estargz.TOCEntry, out *[]fileResult) {
	var names []string
	children := map[string]*estargz.TOCEntry{}
	e.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
		names = append(names, base)
		children[base] = ent
		return true
	})
	sort.Strings(names)
	for _, base := range names {
		ent := children[base]
		name := path.Join(dir, base)
		fr := fileResult{Name: name, Type: ent.Type, Size: ent.Size, Mode: ent.Mode, LinkName: ent.LinkName}
		if ent.Type == "reg" {
			fr.SHA256, fr.Chunks = readFile(r, v, name, ent)
		} else {
			fr.Size = 0
		}
		*out = append(*out, fr)
		if ent.Type == "dir" {
			walk(r, v, name, ent, out)
		}
	}
}

// readFile reads the file through OpenFile, verifying each chunk against its digest, and
// returns the sha256 of the whole file and the number of chunks.
func readFile(r *estargz.Reader, v estargz.TOCEntryVerifier, name string, ent *estargz.TOCEntry) (string, int) {
	sr, err := r.OpenFile(name)
	if err != nil {
		fail("OpenFile(%q): %v", name, err)
	}
	whole := sha256.New()
	var off int64
	chunks := 0
	for off < ent.Size {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			fail("%q: no chunk at offset %d", name, off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			fail("%q: chunk at %d has offset %d size %d", name, off, ce.ChunkOffset, ce.ChunkSize)
		}
		buf := make([]byte, ce.ChunkSize)
		if _, err := sr.ReadAt(buf, ce.ChunkOffset); err != nil && err != io.EOF {
			fail("%q: reading chunk at %d: %v", name, off, err)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			fail("%q: verifier for chunk at %d: %v", name, off, err)
		}
		cv.Write(buf)
		if !cv.Verified() {
			fail("%q: chunk at %d does not match its digest", name, off)
		}
		whole.Write(buf)
		off += ce.ChunkSize
		chunks++
	}
	sum := "sha256:" + hex.EncodeToString(whole.Sum(nil))
	if ent.Digest != "" && ent.Digest != sum {
		fail("%q: file digest %s, TOC says %s", name, sum, ent.Digest)
	}
	return sum, chunks
}
