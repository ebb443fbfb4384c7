# matrix: several axes, name templating, the group a matrix block's label becomes, and a
# target: context that names one fork.
variable "VERSIONS" {
  type    = list(string)
  default = ["3.11", "3.12"]
}

group "default" {
  targets = ["app", "tools"]
}

target "base" {
  name     = "base-${replace(py, ".", "")}"
  matrix   = { py = VERSIONS }
  context  = "base"
  args     = { PYTHON = py }
  tags     = ["registry.example.com/base:py${py}"]
}

target "app" {
  name    = "app-${variant}-py${replace(py, ".", "")}"
  matrix = {
    variant = ["slim", "full"]
    py      = VERSIONS
  }
  context = "app"
  contexts = {
    base = "target:base-${replace(py, ".", "")}"
  }
  args = {
    VARIANT = variant
    PYTHON  = py
  }
  tags = ["registry.example.com/app:${variant}-${py}"]
}

target "tools" {
  name   = "tools-${item.name}"
  matrix = {
    item = [
      { name = "lint", target = "lint" },
      { name = "test", target = "test" },
    ]
  }
  context = "app"
  target  = item.target
}
