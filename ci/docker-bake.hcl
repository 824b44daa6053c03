# One target per platform image, one per datatool (one Dockerfile, DATASET arg). Cross-builds
# arm64 (Jetson, Raspberry Pi 4) under QEMU. Without buildx: make images (same tags).
#   docker buildx bake -f ci/docker-bake.hcl            # every target
#   docker buildx bake -f ci/docker-bake.hcl rpi4       # one
#   docker buildx bake -f ci/docker-bake.hcl --set rpi4.args.WHEELS=defect/wheels:rpi4 rpi4   # offline
variable "REGISTRY" { default = "defect" }
variable "TAG" { default = "dev" }

group "default" {
  targets = ["x86-cuda", "x86-cpu", "jetson", "rpi4", "datatools"]
}

target "_common" {
  context = "."
  labels = { "org.opencontainers.image.source" = "defect-detection" }
}

target "x86-cuda" {
  inherits   = ["_common"]
  dockerfile = "platforms/x86-cuda/Dockerfile"
  platforms  = ["linux/amd64"]
  tags       = ["${REGISTRY}/asset:x86-cuda-${TAG}"]
}

target "x86-cpu" {
  inherits   = ["_common"]
  dockerfile = "platforms/x86-cpu/Dockerfile"
  platforms  = ["linux/amd64"]
  tags       = ["${REGISTRY}/asset:x86-cpu-${TAG}"]
}

target "jetson" {
  inherits   = ["_common"]
  dockerfile = "platforms/jetson/Dockerfile"
  platforms  = ["linux/arm64"]
  tags       = ["${REGISTRY}/asset:jetson-${TAG}"]
}

target "rpi4" {
  inherits   = ["_common"]
  dockerfile = "platforms/rpi4/Dockerfile"
  platforms  = ["linux/arm64"]
  tags       = ["${REGISTRY}/asset:rpi4-${TAG}"]
}

target "datatools" {
  name       = "datatool-${tool}"
  matrix     = { tool = ["dagm", "kolektorsdd", "kolektorsdd2", "synthetic"] }
  context    = "datatools"
  dockerfile = "Dockerfile"
  args       = { DATASET = "${tool}" }
  platforms  = ["linux/amd64", "linux/arm64"]
  tags       = ["${REGISTRY}/datatool-${tool}:${TAG}"]
}
