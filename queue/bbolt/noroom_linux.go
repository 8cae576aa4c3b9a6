package bbolt

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// noRoom describes why the database file cannot grow by the step bbolt
// takes next (its size while under 16 MiB, 16 MiB after that, plus a
// margin), or returns "" if it can.
func (s *Store) noRoom() string {
	fi, err := os.Stat(s.path)
	if err != nil {
		return ""
	}
	need := uint64(min(fi.Size(), 16<<20) + 1<<20)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(s.path), &fs); err == nil {
		if free := fs.Bavail * uint64(fs.Bsize); free < need {
			return fmt.Sprintf("%d octets free on the file system", free)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err == nil && lim.Cur != rlimInfinity {
		if uint64(fi.Size())+need > lim.Cur {
			return fmt.Sprintf("the process may not write files beyond %d octets", lim.Cur)
		}
	}
	return ""
}

const rlimInfinity = ^uint64(0)
