// Command grpccall makes one gRPC call with grpc-go over a unix socket, the way a Go
// client dialled with a bare socket path does: the dial target is the path itself (so
// grpc-go sends it as the HTTP/2 :authority) and a dialer connects to the socket.
//
// Usage: grpccall [-stream] SOCKET /package.Service/Method REQUEST_HEX
//
// The request is given as hex-encoded protobuf bytes and sent as is. It prints one JSON
// object: {"code": N, "message": "...", "replies": ["HEX", ...]}; code 0 is OK.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// raw passes protobuf bytes through unchanged.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

type result struct {
	Code    uint32   `json:"code"`
	Message string   `json:"message"`
	Replies []string `json:"replies"`
}

func main() {
	stream := flag.Bool("stream", false, "the method streams its replies")
	flag.Parse()
	if flag.NArg() != 3 {
		fmt.Fprintln(os.Stderr, "usage: grpccall [-stream] SOCKET METHOD REQUEST_HEX")
		os.Exit(2)
	}
	socket, method := flag.Arg(0), flag.Arg(1)
	request, err := hex.DecodeString(flag.Arg(2))
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpccall: the request is not hex:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, socket,
		grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpccall: dialing", socket, ":", err)
		os.Exit(1)
	}
	defer conn.Close()
	res := result{Replies: []string{}}
	if *stream {
		desc := &grpc.StreamDesc{ServerStreams: true}
		s, err := conn.NewStream(ctx, desc, method, grpc.ForceCodec(raw{}))
		if err == nil {
			err = s.SendMsg(&request)
		}
		if err == nil {
			err = s.CloseSend()
		}
		for err == nil {
			var reply []byte
			if err = s.RecvMsg(&reply); err == nil {
				res.Replies = append(res.Replies, hex.EncodeToString(reply))
			}
		}
		if err != io.EOF {
			st := status.Convert(err)
			res.Code, res.Message = uint32(st.Code()), st.Message()
		}
	} else {
		var reply []byte
		if err := conn.Invoke(ctx, method, &request, &reply, grpc.ForceCodec(raw{})); err != nil {
			st := status.Convert(err)
			res.Code, res.Message = uint32(st.Code()), st.Message()
		} else {
			res.Replies = append(res.Replies, hex.EncodeToString(reply))
		}
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
