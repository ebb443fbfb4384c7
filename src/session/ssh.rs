//! SSH agent forwarding (owner: session-services helper; in progress).
