package imagebuild

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
)

// Debian signs its kernel modules, and a kernel built with CONFIG_MODULE_SIG verifies every
// signed module it loads (SHA-256 over the module, then RSA) even when it does not insist on
// signatures. Under TCG that costs 2–7 ms per module, ~35 ms of each boot for the nine a
// microVM loads. An unsigned module skips the check; the kernel accepts it unless it
// enforces signatures (CONFIG_MODULE_SIG_FORCE, module.sig_enforce=1, or lockdown, which
// Debian turns on only under EFI Secure Boot, which no banger VM has) and marks itself
// tainted ('E' in /proc/sys/kernel/tainted, a notice in the kernel log). So the image
// builder drops the signatures when the kernel's configuration says they are not required.

// moduleSigMagic ends a signed module (the kernel's MODULE_SIG_STRING).
const moduleSigMagic = "~Module signature appended~\n"

// moduleSigInfoLen is the size of the kernel's struct module_signature, which sits between
// the signature and the magic: algo, hash, id_type, signer_len, key_id_len, 3 pad bytes,
// then the signature's length (big-endian u32).
const moduleSigInfoLen = 12

// pkeyIDPKCS7 is module_signature.id_type for a PKCS#7 signature, the only kind the kernel
// accepts for modules.
const pkeyIDPKCS7 = 2

// stripModuleSignature returns data without its appended signature, and whether it had
// one. Data that does not end in a well-formed PKCS#7 module signature is returned as it
// is: the kernel then treats it exactly as before.
func stripModuleSignature(data []byte) ([]byte, bool) {
	if !bytes.HasSuffix(data, []byte(moduleSigMagic)) {
		return data, false
	}
	end := len(data) - len(moduleSigMagic)
	if end < moduleSigInfoLen {
		return data, false
	}
	info := data[end-moduleSigInfoLen : end]
	if info[2] != pkeyIDPKCS7 {
		return data, false
	}
	sigLen := int64(binary.BigEndian.Uint32(info[8:]))
	modLen := int64(end-moduleSigInfoLen) - sigLen
	if modLen < 4 || !bytes.HasPrefix(data[:modLen], []byte("\x7fELF")) {
		return data, false
	}
	return data[:modLen], true
}

// moduleSigForced reports whether the kernel whose build configuration is at configPath
// refuses unsigned modules (CONFIG_MODULE_SIG_FORCE=y). A configuration that cannot be read
// counts as forcing them: keeping the signatures is always safe.
func moduleSigForced(configPath string) (bool, error) {
	f, err := os.Open(configPath)
	if err != nil {
		return true, fmt.Errorf("reading the kernel configuration: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "CONFIG_MODULE_SIG_FORCE=y" {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return true, fmt.Errorf("reading the kernel configuration %s: %w", configPath, err)
	}
	return false, nil
}
