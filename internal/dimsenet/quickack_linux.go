//go:build linux

package dimsenet

import (
	"net"
	"syscall"
)

// quickAck asks Linux to acknowledge received segments at once. Peers
// that write a PDU in several small writes with Nagle's algorithm on (DCMTK
// does, hence Orthanc and dcmqrscp) otherwise wait for our delayed ACK,
// about 40 ms, before each message's second part: 45 ms per instance of a
// C-GET. Linux leaves quick-ack mode by itself, so it is set before every
// read.
func quickAck(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
