package guest

// Version is the agent's version, set at build time with
// -ldflags "-X banger/internal/guest.Version=…".
var Version = "dev"
