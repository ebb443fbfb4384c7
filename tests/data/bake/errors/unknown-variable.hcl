target "default" {
  tags = ["app:${NOT_DECLARED}"]
}
