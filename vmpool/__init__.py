"""vmpool: self-hosted sandboxes (bubblewrap and microVM drivers) behind one guest-agent protocol."""
