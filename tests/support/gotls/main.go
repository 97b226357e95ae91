// A small Go HTTPS server and client for the gotls tests (built from source in the test run).
//
//	gotls serve CERT KEY ADDR          serve HTTPS (HTTP/2 and HTTP/1.1) until killed
//	gotls get [-h1] URL...             GET each URL over one client (keep-alive), print the bodies
//	gotls post [-h1] URL BODY          POST BODY to URL
//	gotls loop [-h1] URL N PAUSE_MS    N requests URL/0 .. URL/N-1, one after the other
//
// With SSLKEYLOGFILE set, both sides log their TLS secrets there (crypto/tls KeyLogWriter): the
// ground truth of the secrets tests. GOTLS_TLS12=1 limits the client to TLS 1.2.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func keyLog(cfg *tls.Config) *tls.Config {
	if path := os.Getenv("SSLKEYLOGFILE"); path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cfg.KeyLogWriter = f
	}
	return cfg
}

func client(h1 bool) *http.Client {
	cfg := keyLog(&tls.Config{InsecureSkipVerify: true})
	if os.Getenv("GOTLS_TLS12") == "1" {
		cfg.MaxVersion = tls.VersionTLS12
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: !h1}
	if h1 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func do(c *http.Client, req *http.Request) {
	resp, err := c.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%s %d %s", resp.Proto, resp.StatusCode, body)
}

func main() {
	args := os.Args[1:]
	mode := args[0]
	args = args[1:]
	h1 := len(args) > 0 && args[0] == "-h1"
	if h1 {
		args = args[1:]
	}
	switch mode {
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "go answers %s %s (%s)\n", r.Method, r.URL.Path, body)
		})
		srv := &http.Server{Addr: args[2], TLSConfig: keyLog(&tls.Config{})}
		fmt.Println("listening")
		if err := srv.ListenAndServeTLS(args[0], args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "get":
		c := client(h1)
		for _, u := range args {
			req, _ := http.NewRequest("GET", u, nil)
			do(c, req)
		}
	case "post":
		req, _ := http.NewRequest("POST", args[0], strings.NewReader(args[1]))
		do(client(h1), req)
	case "loop":
		c := client(h1)
		n, _ := strconv.Atoi(args[1])
		pause, _ := strconv.Atoi(args[2])
		for i := 0; i < n; i++ {
			req, _ := http.NewRequest("GET", fmt.Sprintf("%s/%d", args[0], i), nil)
			do(c, req)
			time.Sleep(time.Duration(pause) * time.Millisecond)
		}
	}
}
