target "default" {
  name   = "same"
  matrix = { v = ["a", "b"] }
}
