# Variables: defaults, environment overrides, typed variables, top-level attributes.
variable "REGISTRY" {
  default = "registry.example.com/team"
}
variable "TAG" {
  default = "dev"
}
variable "RELEASE" {
  default = false
}
variable "BUILD_NUMBER" {
  default = 1
}
variable "UNSET" {}
variable "PLATFORMS" {
  type    = list(string)
  default = ["linux/amd64"]
}
variable "EXTRA_LABELS" {
  type    = map(string)
  default = { team = "core" }
}
variable "FEATURES" {
  type    = set(string)
  default = ["b", "a"]
}
variable "CHANNEL" {
  type    = string
  default = "stable"
  validation {
    condition     = contains(["stable", "beta", "edge"], CHANNEL)
    error_message = "CHANNEL must be stable, beta or edge."
  }
}
# A top-level attribute is a variable the environment cannot change.
IMAGE = "${REGISTRY}/app"

group "default" {
  targets = ["app"]
}

target "app" {
  context   = "app"
  platforms = PLATFORMS
  tags = concat(
    ["${IMAGE}:${TAG}", "${IMAGE}:build-${BUILD_NUMBER + 1}"],
    RELEASE ? ["${IMAGE}:latest"] : [],
  )
  args = {
    UNSET_WAS   = "[${UNSET}]"
    CHANNEL     = CHANNEL
    FEATURES    = join(",", FEATURES)
    LOCAL       = BAKE_LOCAL_PLATFORM
    CMD_CONTEXT = BAKE_CMD_CONTEXT
  }
  labels = merge(EXTRA_LABELS, { "org.opencontainers.image.version" = TAG })
  pull   = RELEASE
}
