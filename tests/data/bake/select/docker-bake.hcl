# Which targets a request names: groups, nested groups, the default group (also nested in
# another group), a private target, and targets pulled in through `target:` contexts (a chain
# of them, one with its own output, one untagged).
group "default" {
  targets = ["app", "images"]
}

group "images" {
  targets = ["web", "worker"]
}

group "release" {
  targets = ["images", "tool"]
}

group "all" {
  targets = ["default", "release"]
}

target "_common" {
  args = { COMMON = "1" }
}

target "runtime" {
  context = "runtime"
}

target "base" {
  context  = "base"
  contexts = { rt = "target:runtime" }
  tags     = ["registry.example.com/base:1"]
  output   = ["type=local,dest=out/base"]
}

target "app" {
  inherits = ["_common"]
  context  = "app"
  tags     = ["registry.example.com/app:1"]
}

target "web" {
  inherits = ["_common"]
  context  = "web"
  contexts = { base = "target:base" }
}

target "worker" {
  context  = "worker"
  contexts = { base = "target:base" }
}

target "tool" {
  context = "tool"
  args    = { TOOL = "lint" }
}
