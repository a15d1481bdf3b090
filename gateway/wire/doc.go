// Package wire is kpush's one WebSocket frame codec and the protocol v1
// message types, shared by the gateway (the server), gateway/client and the
// benchmark's load generator (cmd/kpush-bench/internal/wsload).
//
// What it owns:
//   - frame.go: frames over byte slices. The server parses client frames in
//     place (ParseClientFrame) and writes unmasked server frames
//     (ServerHeaderLen, PutServerHeader, ServerFrame, CloseFrame); a client
//     parses server frame headers (ParseServerHeader) and appends masked
//     client frames (AppendClientFrame). Close bodies are checked against
//     RFC 6455 (CheckCloseBody, ValidCloseCode).
//   - protocol.go: protocol v1's requests (Request), server frames as a
//     client decodes them (Frame), the error codes of {"op":"error"} and the
//     close codes kpush adds to RFC 6455's.
//
// gobwas/ws is called where it does the job (opcode and status-code
// checks, masking with ws.Cipher, header sizes, close bodies); kpush's own
// code remains only where a benchmark in frame_test.go shows gobwas/ws
// costs an allocation on the hot path, and the comment there names the
// figure.
//
// Everything here is a plain function over byte slices or a value type: no
// goroutines, no state, safe for concurrent use. wire imports nothing of
// kpush.
package wire
