# Keys for what RUN steps see (network, hosts, /dev/shm, limits), inline Dockerfiles,
# attestations (one per type; an inheriting target adds to its parent's) and annotations (an
# inheriting target adds to its parent's).
group "default" {
  targets = ["run", "inline"]
}

target "run" {
  tags            = ["registry.example.com/run:1"]
  network         = "host"
  shm-size        = "128m"
  ulimits         = ["nofile=1024:2048", "nproc=512:512"]
  no-cache-filter = ["build"]
  extra-hosts     = { "db.local" = "10.0.0.2", "cache.local" = "10.0.0.3" }
  entitlements    = ["security.insecure"]
  annotations     = ["index:org.opencontainers.image.title=x"]
  attest          = ["type=sbom"]
  description     = "documentation only"
}

target "inline" {
  inherits          = ["run"]
  tags              = ["registry.example.com/inline:1"]
  annotations       = ["manifest[linux/amd64],manifest-descriptor:org.example.k=v"]
  attest            = ["type=provenance,mode=max", "type=sbom,disabled=true"]
  dockerfile-inline = <<-EOT
    FROM scratch
    COPY Dockerfile /
    EOT
}
