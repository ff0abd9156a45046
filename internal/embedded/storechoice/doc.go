// Package storechoice compares bbolt and Pebble, the two embedded key-value
// libraries the embedded backend could be built on. It measures the work wsm
// gives its store: durable commits of a batch of events with the view keys
// their fold reads and rewrites, bulk reads, and the files left on disk.
//
// It is a module of its own so that the main module does not depend on the
// library that lost. Its only code outside tests is PebbleStore, a
// state.Store on Pebble that keeps the same promises as the bbolt store in
// internal/embedded, so that both run the same benchmark through the same
// interface. PebbleStore exists for the comparison and nothing else uses it.
package storechoice
