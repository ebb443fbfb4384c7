variable "CHANNEL" {
  default = "nightly"
  validation {
    condition     = CHANNEL == "stable"
    error_message = "only stable"
  }
}
target "default" {}
