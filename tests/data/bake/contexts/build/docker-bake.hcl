# Named contexts of every kind; this file lives in build/ and is used with
# `-f build/docker-bake.hcl` from the directory above: paths are relative to where bake
# runs, not to this file.
group "default" {
  targets = ["web"]
}

target "base" {
  context    = "base"
  dockerfile = "Dockerfile"
  tags       = ["registry.example.com/base:1"]
}

target "web" {
  context    = "services/web"
  dockerfile = "../web/Dockerfile"
  contexts = {
    base    = "target:base"
    lua     = "shared/lua"
    alpine  = "docker-image://alpine:3.20"
    local   = "cwd://shared"
    empty   = ""
  }
  tags = ["registry.example.com/web:1"]
}
