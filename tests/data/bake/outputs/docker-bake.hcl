# Secrets, ssh, caches and outputs in every form buildx reads, relative paths included.
group "default" {
  targets = ["registry", "local", "mixed", "load", "objects"]
}

target "_common" {
  context = "app"
  secret = [
    "id=npmrc,src=npmrc",
    "type=env,id=token,env=GITHUB_TOKEN",
    "id=plain,env=HOME",
  ]
  ssh       = ["agent=agent.sock"]
  platforms = ["linux/amd64,linux/arm64"]
}

target "registry" {
  inherits   = ["_common"]
  tags       = ["registry.example.com/app:1", "registry.example.com/app:latest", "registry.example.com/app:1"]
  cache-from = ["registry.example.com/app:cache", "type=local,src=cache-in"]
  cache-to   = ["type=registry,ref=registry.example.com/app:cache,mode=max"]
  output     = ["type=registry"]
}

target "local" {
  inherits = ["_common"]
  cache-to = ["type=local,dest=cache-out,mode=max"]
  output   = ["type=local,dest=out/local"]
}

target "mixed" {
  inherits = ["_common"]
  tags     = ["registry.example.com/mixed:1"]
  output   = ["type=image,push=true,compression=zstd", "type=tar,dest=out/mixed.tar"]
  labels   = { a = "1", b = null }
}

target "load" {
  inherits = ["_common"]
  tags     = ["mixed:local"]
  output   = ["type=docker"]
  pull     = true
  no-cache = false
}

target "objects" {
  inherits = ["_common"]
  tags     = ["registry.example.com/objects:1"]
  cache-from = [
    { type = "registry", ref = "registry.example.com/objects:cache" },
  ]
  cache-to = [
    { type = "inline" },
  ]
  secret = [
    { id = "obj", src = "npmrc" },
  ]
  output = [
    { type = "image", push = "true" },
  ]
}
