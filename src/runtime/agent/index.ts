/**
 * Host side of the guest agent protocol (docs/agent-protocol.md): connect to a VM's agent
 * socket, exec with streamed stdio, signals, file transfer, shutdown, the main exit status.
 */
export { AgentClient, ExecSession, waitForAgent, type AgentHello, type ConnectOptions, type ExecRequest, type ExitStatus } from './client.js'
export { MAX_PAYLOAD, PROTOCOL_VERSION, STREAM_WINDOW, signalName, signalNumber } from './protocol.js'
