package scsi

import "encoding/binary"

// Mode pages supported: caching (0x08), control (0x0A) and informational
// exceptions control (0x1C).
const (
	pageCaching  = 0x08
	pageControl  = 0x0a
	pageInfoExc  = 0x1c
	pageAllPages = 0x3f

	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

// modeParams are the changeable mode parameters of a logical unit.
type modeParams struct {
	WCE    bool // caching page
	DSense bool // control page D_SENSE
	SWP    bool // control page SWP: software write protect
}

var modePageOrder = []byte{pageCaching, pageControl, pageInfoExc}

// modePage renders one page for the page control pc.
func modePage(code byte, pc byte, cur, def modeParams) []byte {
	p := cur
	if pc == pcDefault || pc == pcSaved {
		p = def
	}
	switch code {
	case pageCaching:
		b := make([]byte, 20)
		b[0], b[1] = pageCaching, 18
		if pc == pcChangeable {
			b[2] = 0x04 // WCE changeable
			return b
		}
		if p.WCE {
			b[2] |= 0x04
		}
		// Prefetch fields left zero; NV_DIS (byte 12 bit 0) zero.
		return b
	case pageControl:
		b := make([]byte, 12)
		b[0], b[1] = pageControl, 10
		if pc == pcChangeable {
			b[2] = 0x04 // D_SENSE changeable
			b[4] = 0x08 // SWP changeable
			return b
		}
		if p.DSense {
			b[2] |= 0x04
		}
		if p.SWP {
			b[4] |= 0x08
		}
		b[2] |= 0x02                              // GLTSD: no log parameters saved
		b[3] = 0x10                               // QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering), QERR 0
		binary.BigEndian.PutUint16(b[8:], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
		return b
	case pageInfoExc:
		b := make([]byte, 12)
		b[0], b[1] = pageInfoExc, 10
		if pc == pcChangeable {
			return b
		}
		b[2] = 0x08 // DEXCPT: informational exceptions disabled
		return b
	}
	return nil
}

// modeSense builds MODE SENSE (6) or (10) data. wp and dpofua fill the
// device-specific parameter; nblocks/bs the block descriptor.
func modeSense(c *CDB, cur, def modeParams, wp bool, nblocks uint64, bs uint32) ([]byte, *SenseError) {
	ten := c.Op == opModeSense10
	if c.SubPage != 0 && !(c.PageCode == pageAllPages && c.SubPage == 0xff) {
		return nil, errInvalidCDB(3, -1)
	}
	var pages []byte
	if c.PageCode == pageAllPages {
		for _, code := range modePageOrder {
			pages = append(pages, modePage(code, c.PC, cur, def)...)
		}
	} else {
		p := modePage(c.PageCode, c.PC, cur, def)
		if p == nil {
			return nil, errInvalidCDB(2, 5)
		}
		pages = p
	}
	var dsp byte = 0x10 // DPOFUA
	if wp {
		dsp |= 0x80
	}
	var bd []byte
	if !c.DBD {
		if ten && c.LLBAA {
			bd = make([]byte, 16)
			binary.BigEndian.PutUint64(bd[0:], nblocks)
			binary.BigEndian.PutUint32(bd[12:], bs)
		} else {
			bd = make([]byte, 8)
			n := nblocks
			if n > 0xffffffff {
				n = 0xffffffff
			}
			binary.BigEndian.PutUint32(bd[0:], uint32(n))
			bd[5], bd[6], bd[7] = byte(bs>>16), byte(bs>>8), byte(bs)
		}
		if c.PC == pcChangeable {
			clear(bd)
		}
	}
	var out []byte
	if ten {
		out = make([]byte, 8, 8+len(bd)+len(pages))
		out[3] = dsp
		if len(bd) == 16 {
			out[4] = 0x01 // LONGLBA
		}
		binary.BigEndian.PutUint16(out[6:], uint16(len(bd)))
		out = append(out, bd...)
		out = append(out, pages...)
		binary.BigEndian.PutUint16(out[0:], uint16(len(out)-2))
	} else {
		out = make([]byte, 4, 4+len(bd)+len(pages))
		out[2] = dsp
		out[3] = byte(len(bd))
		out = append(out, bd...)
		out = append(out, pages...)
		out[0] = byte(len(out) - 1)
	}
	return out, nil
}

// modeSelect parses MODE SELECT parameter data and returns the new
// parameters. Only changeable bits may differ from the current values.
func modeSelect(c *CDB, param []byte, cur, def modeParams, nblocks uint64, bs uint32) (modeParams, *SenseError) {
	hdr := 4
	if c.Op == opModeSelect10 {
		hdr = 8
	}
	if len(param) == 0 {
		return cur, nil
	}
	if len(param) < hdr {
		return cur, errParamListLength()
	}
	var bdl int
	if hdr == 4 {
		bdl = int(param[3])
	} else {
		bdl = int(be16(param[6:8]))
	}
	if hdr+bdl > len(param) {
		return cur, errParamListLength()
	}
	if bdl != 0 && bdl != 8 && bdl != 16 {
		return cur, errInvalidParam(hdr-1, -1)
	}
	// A block descriptor may only restate the current block length.
	if bdl >= 8 {
		d := param[hdr : hdr+bdl]
		var l uint32
		if bdl == 8 {
			l = be24(d[5:8])
		} else {
			l = be32(d[12:16])
		}
		if l != 0 && l != bs {
			return cur, errInvalidParam(hdr, -1)
		}
	}
	np := cur
	p := param[hdr+bdl:]
	off := hdr + bdl
	for len(p) > 0 {
		if len(p) < 2 {
			return cur, errParamListLength()
		}
		if p[0]&0x40 != 0 { // SPF: no subpages
			return cur, errInvalidParam(off, 6)
		}
		code := p[0] & 0x3f
		l := int(p[1]) + 2
		if l > len(p) {
			return cur, errParamListLength()
		}
		want := modePage(code, pcCurrent, cur, def)
		mask := modePage(code, pcChangeable, cur, def)
		if want == nil {
			return cur, errInvalidParam(off, 5)
		}
		if l != len(want) {
			return cur, errInvalidParam(off+1, -1)
		}
		got := p[:l]
		for i := 2; i < l; i++ {
			if (got[i]^want[i])&^mask[i] != 0 {
				return cur, errInvalidParam(off+i, -1)
			}
		}
		switch code {
		case pageCaching:
			np.WCE = got[2]&0x04 != 0
		case pageControl:
			np.DSense = got[2]&0x04 != 0
			np.SWP = got[4]&0x08 != 0
		}
		p = p[l:]
		off += l
	}
	return np, nil
}
