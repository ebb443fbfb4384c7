# inherits: chains, several parents (later ones win), what merges and what is replaced.
group "default" {
  targets = ["services"]
}
group "services" {
  targets = ["api", "worker"]
}

target "_base" {
  args = {
    PYTHON  = "3.12"
    VERSION = "base"
  }
  labels = {
    "org.example.team" = "platform"
  }
  tags       = ["registry.example.com/base"]
  platforms  = ["linux/amd64", "linux/arm64"]
  cache-from = ["type=registry,ref=registry.example.com/cache:base"]
  secret     = ["id=token,src=token.txt"]
}

target "_ci" {
  inherits   = ["_base"]
  args       = { VERSION = "ci" }
  cache-from = ["type=registry,ref=registry.example.com/cache:ci"]
  cache-to   = ["type=inline"]
  pull       = true
}

target "_local" {
  args      = { DEBUG = "1", PYTHON = "3.11" }
  platforms = ["linux/amd64"]
  secret    = ["id=token,env=TOKEN_FROM_ENV"]
}

target "api" {
  inherits = ["_ci", "_local"]
  context  = "svc/api"
  tags     = ["registry.example.com/api:1"]
  args     = { SERVICE = "api" }
}

target "worker" {
  inherits   = ["api"]
  context    = "svc/worker"
  dockerfile = "Dockerfile.worker"
  tags       = ["registry.example.com/worker:1"]
  args       = { SERVICE = "worker", DEBUG = null }
  no-cache   = true
}
