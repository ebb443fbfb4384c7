# The main file; docker-bake.override.hcl and docker-bake.override.json are read after it
# when no -f is given.
variable "TAG" {
  default = "main"
}
variable "REGISTRY" {
  default = "registry.example.com"
}

group "default" {
  targets = ["app"]
}

target "app" {
  context   = "app"
  tags      = ["${REGISTRY}/app:${TAG}"]
  args      = { FROM_MAIN = "1", SHARED = "main" }
  labels    = { stage = "main" }
  platforms = ["linux/amd64"]
  cache-from = ["type=registry,ref=${REGISTRY}/app:cache"]
}
