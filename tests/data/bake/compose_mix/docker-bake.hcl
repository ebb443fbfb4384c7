# A compose file and a bake file read together: compose first, then the bake file merges
# into services of the same name, and adds targets of its own.
target "web" {
  args      = { SHARED = "bake", FROM_BAKE = "1" }
  tags      = ["registry.example.com/web:bake"]
  platforms = ["linux/amd64"]
}

target "worker" {
  inherits = ["web"]
  context  = "worker"
  tags     = ["registry.example.com/worker:bake"]
}
