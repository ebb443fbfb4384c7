//! Generated protobuf/gRPC code, one Rust module per proto package. Nothing else lives here.
#![allow(clippy::all, missing_docs, non_snake_case)]

pub mod pb {
    tonic::include_proto!("pb");
}

pub mod fsutil {
    pub mod types {
        tonic::include_proto!("fsutil.types");
    }
}

pub mod moby {
    pub mod buildkit {
        pub mod v1 {
            tonic::include_proto!("moby.buildkit.v1");
            pub mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }
            pub mod frontend {
                tonic::include_proto!("moby.buildkit.v1.frontend");
            }
        }
        pub mod secrets {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }
    pub mod filesync {
        pub mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }
    pub mod sshforward {
        pub mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
    pub mod upload {
        pub mod v1 {
            tonic::include_proto!("moby.upload.v1");
        }
    }
}

pub use fsutil::types::{packet::PacketType, Packet, Stat};
pub use moby::buildkit::v1 as control;

pub mod containerd {
    pub mod services {
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
    }
}
