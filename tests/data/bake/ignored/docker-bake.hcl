# Keys bk-build cannot honour: each must be reported, never silently dropped.
target "default" {
  tags            = ["registry.example.com/ignored:1"]
  annotations     = ["index:org.opencontainers.image.title=x"]
  attest          = ["type=sbom"]
  shm-size        = "128m"
  ulimits         = ["nofile=1024:1024"]
  no-cache-filter = ["build"]
  extra-hosts     = { "db.local" = "10.0.0.2" }
  description     = "documentation only"
}
