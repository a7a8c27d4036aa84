# Sourced by the sanitizer scripts (test-sanitize.sh, test-tsan.sh):
#   sanitized_package BUILD_DIR
# lays out BUILD_DIR/python/lowbit, a package folder whose modules are this
# checkout's (symlinks) but whose _core is the one built in BUILD_DIR, so the
# in-place python/lowbit/_core*.so is never replaced. Run from the checkout root.
sanitized_package() {
  local build_dir="$1" pkg="$1/python/lowbit" entry
  rm -rf "$build_dir/python"
  mkdir -p "$pkg"
  for entry in python/lowbit/*; do
    case "$(basename "$entry")" in _core*.so|__pycache__) continue ;; esac
    ln -s "$PWD/$entry" "$pkg/"
  done
  cp "$build_dir"/_core*.so "$pkg/"
}
