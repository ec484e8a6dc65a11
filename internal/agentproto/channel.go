package agentproto

// AgentPort is the vsock port the guest agent listens on (firecracker's hybrid vsock).
const AgentPort = 1024

// AgentSerialName is the virtio-serial port name of the agent channel (qemu).
const AgentSerialName = "banger.agent"
