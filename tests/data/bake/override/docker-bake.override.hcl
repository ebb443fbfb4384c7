# Local overrides: a variable default replaced, a target extended, a group replaced.
variable "TAG" {
  default = "override"
}

group "default" {
  targets = ["app", "worker"]
}

target "app" {
  args       = { SHARED = "override", FROM_OVERRIDE = "1" }
  cache-from = ["type=registry,ref=${REGISTRY}/app:cache-override"]
  platforms  = ["linux/arm64"]
}

target "worker" {
  inherits = ["app"]
  context  = "worker"
  tags     = ["${REGISTRY}/worker:${TAG}"]
}
