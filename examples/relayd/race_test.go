//go:build race

package main

// raceBuild: the relayd binary of the subprocess tests is built with -race
// too, which also reuses the packages this test binary compiled.
const raceBuild = true
