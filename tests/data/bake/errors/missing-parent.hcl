target "default" {
  inherits = ["nope"]
}
