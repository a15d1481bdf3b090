package router

// MaxChannelLen is the longest channel name accepted.
const MaxChannelLen = 200

// ValidChannel reports whether name matches ^[A-Za-z0-9_.:@/-]{1,200}$, the
// channel names clients may subscribe to and routes may produce.
func ValidChannel(name string) bool {
	if len(name) == 0 || len(name) > MaxChannelLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !channelByte[name[i]] {
			return false
		}
	}
	return true
}

var channelByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_.:@/-" {
		t[c] = true
	}
	return t
}()
