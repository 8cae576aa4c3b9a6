// Package syncbuf serialises writes that several goroutines make to one
// destination: a log handler's output, a protocol transcript that a
// connection writes while a test reads it.
//
// Buffer collects what is written and can be read at any time; Writer
// passes each write on whole to another io.Writer, so that the records of
// concurrent writers do not interleave. Both are safe for concurrent use
// and need no closing.
package syncbuf
