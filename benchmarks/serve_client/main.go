// A native load client for `kiln serve`'s binary REST path (Triton's binary tensor data
// extension), so that a client's own cost does not hide the server's: the request body is
// built once by the caller, and each request is one POST and one read of the whole answer.
//
//	go run . -url URL -body FILE -header-length N [-requests 40] [-clients 1]
//
// Prints one JSON line: the latencies' p50 and p99 in ms, and requests per second.
//
//	go run . -serve ADDR -response-bytes N
//
// serves the transport floor instead: an HTTP server that reads each request's whole body and
// answers with N bytes and no other work, so that what the client measures against it is the
// cost of moving those bytes over this machine's loopback, the least any server could take.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

type result struct {
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	PerSec float64 `json:"per_s"`
	Errors int     `json:"errors"`
}

func post(client *http.Client, url string, body []byte, headerLength string) error {
	request, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	request.Header.Set("Content-Type", "application/octet-stream")
	request.Header.Set("Inference-Header-Content-Length", headerLength)
	response, err := client.Do(request)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if _, err := io.Copy(io.Discard, response.Body); err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", response.StatusCode)
	}
	return nil
}

// run sends `requests` requests from `clients` goroutines, each with a connection of its own,
// after one untimed request per client to open it.
func run(url string, body []byte, headerLength string, requests, clients int) result {
	transport := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 120 * time.Second}
	var warm sync.WaitGroup
	for i := 0; i < clients; i++ {
		warm.Add(1)
		go func() { defer warm.Done(); _ = post(client, url, body, headerLength) }()
	}
	warm.Wait()
	latencies := make([]float64, 0, requests)
	errors := 0
	var mu sync.Mutex
	next := make(chan struct{}, requests)
	for i := 0; i < requests; i++ {
		next <- struct{}{}
	}
	close(next)
	started := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				t := time.Now()
				err := post(client, url, body, headerLength)
				elapsed := float64(time.Since(t).Microseconds()) / 1000
				mu.Lock()
				if err != nil {
					errors++
				} else {
					latencies = append(latencies, elapsed)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	wall := time.Since(started).Seconds()
	sort.Float64s(latencies)
	out := result{PerSec: float64(len(latencies)) / wall, Errors: errors}
	if n := len(latencies); n > 0 {
		out.P50Ms = latencies[n/2]
		out.P99Ms = latencies[min(n-1, n*99/100)]
	}
	return out
}

// floor answers every request, once its whole body is read, with `response`.
func floor(address string, response []byte) error {
	length := strconv.Itoa(len(response))
	handler := func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", length)
		_, _ = w.Write(response)
	}
	return http.ListenAndServe(address, http.HandlerFunc(handler))
}

func main() {
	serve := flag.String("serve", "", "serve the transport floor on this address instead")
	responseBytes := flag.Int("response-bytes", 0, "with -serve: bytes in each answer")
	url := flag.String("url", "", "the model's infer URL")
	bodyFile := flag.String("body", "", "file holding the whole request body")
	headerLength := flag.Int("header-length", 0, "length of the JSON header in the body")
	requests := flag.Int("requests", 40, "timed requests")
	clients := flag.Int("clients", 1, "concurrent clients")
	flag.Parse()
	if *serve != "" {
		if err := floor(*serve, make([]byte, *responseBytes)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	body, err := os.ReadFile(*bodyFile)
	if err != nil || *url == "" {
		fmt.Fprintln(os.Stderr, "usage: -url URL -body FILE -header-length N:", err)
		os.Exit(2)
	}
	out := run(*url, body, strconv.Itoa(*headerLength), *requests, *clients)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
