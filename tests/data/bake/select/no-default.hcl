# No default group and no target named `default`: naming no target is an error in buildx.
target "app" {
  context = "app"
}

target "tool" {
  context = "tool"
}
