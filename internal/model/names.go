package model

import (
	"crypto/rand"
	"encoding/hex"
	"math/big"
)

var adjectives = []string{
	"amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
	"fuzzy", "gentle", "glad", "happy", "jolly", "keen", "lucky", "mellow", "misty", "nimble",
	"noble", "proud", "quick", "quiet", "rapid", "rusty", "shiny", "silent", "snappy", "solar",
	"steady", "sunny", "swift", "tidy", "vivid", "witty", "zesty", "zen", "lunar", "spry",
}

var nouns = []string{
	"otter", "falcon", "badger", "comet", "cedar", "heron", "lynx", "maple", "meteor", "orca",
	"panda", "pebble", "quartz", "raven", "river", "robin", "salmon", "sparrow", "spruce", "tiger",
	"walrus", "willow", "yak", "zebra", "bison", "koala", "lemur", "moose", "newt", "puffin",
	"gecko", "ibis", "kestrel", "marmot", "narwhal", "ocelot", "tapir", "wombat", "fjord", "mesa",
}

func pick(list []string) string {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
	return list[n.Int64()]
}

// RandomName returns a readable adjective-noun name; callers retry on collision.
func RandomName() string { return pick(adjectives) + "-" + pick(nouns) }

// NewID returns a random 32-hex-character VM id.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
