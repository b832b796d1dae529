/**
 * The pickle codec (lib/pickle.ts): plain values decoded from every protocol, everything else
 * refused without running it, hostile input bounded, and the encoder writing the bytes Python
 * 2.7's cPickle writes at protocol 2 (what Sentry 9 stores).
 *
 * Decoding vectors were written once by python3's pickle.dumps (protocols 0-5) and are kept here
 * as literals: the tests never run Python. Encoder vectors are Python 2.7 cPickle bytes, written by
 * hand from its rules (Modules/cPickle.c: save_int, save_long, save_unicode, save_list/batch_list,
 * save_dict/batch_dict_exact, put/put2); Python 3 differs (memo from 0, LONG1 for 2**31..2**63).
 */
import { expect } from 'chai';
import {
  DEFAULT_PICKLE_LIMITS, PickleBytes, PickleError, PickleFloat, decodePickle, decodePickledField, encodePickle,
  encodePickledField, pickleToJsonText, pickledFieldToJsonText, pyFloatRepr, type PickleErrorCode, type PickleInput,
} from '../lib/pickle.js';

/** Bytes from hex. */
function hex(h: string): Uint8Array {
  return Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
}

/** Bytes from a latin-1 string (one char per byte), as pickles are usually quoted. */
function lat(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function toHex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function pickleError(fn: () => unknown): PickleError {
  try {
    fn();
  } catch (e) {
    expect(e).to.be.instanceOf(PickleError);
    return e as PickleError;
  }
  expect.fail('expected a PickleError');
}

function expectCode(fn: () => unknown, code: PickleErrorCode): PickleError {
  const e = pickleError(fn);
  expect(e.code, e.message).to.equal(code);
  return e;
}

/**
 * Written once by python3 (3.12):
 *   x = [1]; s = 'shared-string'
 *   base = {'ints': [0, 1, 255, 256, 65535, 65536, -1, -256, 2**31-1, -2**31, 2**31, 2**40, -2**63, 2**64, -2**70, 2**100],
 *     'floats': [0.0, 1.0, -2.5, 1e16, 1e-05, 0.1, 1.2345678901234568e+17, 5e-324, 1.7976931348623157e+308],
 *     'consts': [True, False, None],
 *     'text': ['', 'a', 'ascii text', '\u00e9', 'na\u00efve \u20ac', '\U0001F600', 'quote\'s "dq" \\ back\nnl\ttab\x00nul\x7f', '\u00fc\u1234\\u0041'],
 *     'tuples': [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)], 'shared': [x, x, s, s], 'empty': [[], {}],
 *     'nested': {'k': {'k2': [[[]]]}}, 7: 'int key'}
 *   composite: pickle.dumps(base, proto) for proto in 0..5
 *   bytes: pickle.dumps([b'', b'ab', b'\xff\x00' * 200], proto) for proto in 3..5
 *   bytearray: pickle.dumps(bytearray(b'xyz'), 5)
 */
const PYTHON3_VECTORS: { name: string; proto: number; hex: string }[] = [
  { name: 'composite', proto: 0, hex: [
      '286470300a56696e74730a70310a286c70320a49300a6149310a61493235350a61493235360a614936353533350a614936353533360a6149',
      '2d310a61492d3235360a6149323134373438333634370a61492d323134373438333634380a614c323134373438333634384c0a614c313039',
      '393531313632373737364c0a614c2d393232333337323033363835343737353830384c0a614c313834343637343430373337303935353136',
      '31364c0a614c2d313138303539313632303731373431313330333432344c0a614c3132363736353036303032323832323934303134393637',
      '30333230353337364c0a617356666c6f6174730a70330a286c70340a46302e300a6146312e300a61462d322e350a614631652b31360a6146',
      '31652d30350a6146302e310a6146312e32333435363738393031323334353638652b31370a614635652d3332340a6146312e373937363933',
      '31333438363233313537652b3330380a617356636f6e7374730a70350a286c70360a4930310a614930300a614e617356746578740a70370a',
      '286c70380a560a70390a6156610a7031300a6156617363696920746578740a7031310a6156e90a7031320a61566e61ef7665205c75323061',
      '630a7031330a61565c5530303031663630300a7031340a615671756f746527732022647122205c7530303563206261636b5c75303030616e',
      '6c097461625c75303030306e756c7f0a7031350a6156fc5c75313233345c753030356375303034310a7031360a6173567475706c65730a70',
      '31370a286c7031380a2874612849310a747031390a612849310a49320a747032300a612849310a49320a49330a747032310a612849310a49',
      '320a49330a49340a747032320a6173567368617265640a7032330a286c7032340a286c7032350a49310a61616732350a6156736861726564',
      '2d737472696e670a7032360a616732360a617356656d7074790a7032370a286c7032380a286c7032390a6128647033300a6173566e657374',
      '65640a7033310a28647033320a566b0a7033330a28647033340a566b320a7033350a286c7033360a286c7033370a286c7033380a61617373',
      '7349370a56696e74206b65790a7033390a732e',
    ].join('') },
  { name: 'composite', proto: 1, hex: [
      '7d7100285804000000696e747371015d7102284b004b014bff4d00014dffff4a000001004affffffff4a00ffffff4affffff7f4a00000080',
      '4c323134373438333634384c0a4c313039393531313632373737364c0a4c2d393232333337323033363835343737353830384c0a4c313834',
      '34363734343037333730393535313631364c0a4c2d313138303539313632303731373431313330333432344c0a4c31323637363530363030',
      '3232383232393430313439363730333230353337364c0a655806000000666c6f61747371035d710428470000000000000000473ff0000000',
      '00000047c004000000000000474341c37937e08000473ee4f8b588e368f1473fb999999999999a47437b69b4ba630f354700000000000000',
      '01477fefffffffffffff655806000000636f6e73747371055d7106284930310a4930300a4e6558040000007465787471075d710828580000',
      '00007109580100000061710a580a00000061736369692074657874710b5802000000c3a9710c580a0000006e61c3af766520e282ac710d58',
      '04000000f09f9880710e581f00000071756f746527732022647122205c206261636b0a6e6c09746162006e756c7f710f580b000000c3bce1',
      '88b45c753030343171106558060000007475706c657371115d71122829284b01747113284b014b02747114284b014b024b03747115284b01',
      '4b024b034b0474711665580600000073686172656471175d7118285d71194b01616819580d0000007368617265642d737472696e67711a68',
      '1a655805000000656d707479711b5d711c285d711d7d711e6558060000006e6573746564711f7d712058010000006b71217d712258020000',
      '006b3271235d71245d71255d7126616173734b075807000000696e74206b65797127752e',
    ].join('') },
  { name: 'composite', proto: 2, hex: [
      '80027d7100285804000000696e747371015d7102284b004b014bff4d00014dffff4a000001004affffffff4a00ffffff4affffff7f4a0000',
      '00808a0500000080008a060000000000018a0800000000000000808a090000000000000000018a090000000000000000c08a0d0000000000',
      '0000000000000010655806000000666c6f61747371035d710428470000000000000000473ff000000000000047c004000000000000474341',
      'c37937e08000473ee4f8b588e368f1473fb999999999999a47437b69b4ba630f35470000000000000001477fefffffffffffff6558060000',
      '00636f6e73747371055d71062888894e6558040000007465787471075d71082858000000007109580100000061710a580a00000061736369',
      '692074657874710b5802000000c3a9710c580a0000006e61c3af766520e282ac710d5804000000f09f9880710e581f00000071756f746527',
      '732022647122205c206261636b0a6e6c09746162006e756c7f710f580b000000c3bce188b45c753030343171106558060000007475706c65',
      '7371115d711228294b018571134b014b028671144b014b024b03877115284b014b024b034b0474711665580600000073686172656471175d',
      '7118285d71194b01616819580d0000007368617265642d737472696e67711a681a655805000000656d707479711b5d711c285d711d7d711e',
      '6558060000006e6573746564711f7d712058010000006b71217d712258020000006b3271235d71245d71255d7126616173734b0758070000',
      '00696e74206b65797127752e',
    ].join('') },
  { name: 'composite', proto: 3, hex: [
      '80037d7100285804000000696e747371015d7102284b004b014bff4d00014dffff4a000001004affffffff4a00ffffff4affffff7f4a0000',
      '00808a0500000080008a060000000000018a0800000000000000808a090000000000000000018a090000000000000000c08a0d0000000000',
      '0000000000000010655806000000666c6f61747371035d710428470000000000000000473ff000000000000047c004000000000000474341',
      'c37937e08000473ee4f8b588e368f1473fb999999999999a47437b69b4ba630f35470000000000000001477fefffffffffffff6558060000',
      '00636f6e73747371055d71062888894e6558040000007465787471075d71082858000000007109580100000061710a580a00000061736369',
      '692074657874710b5802000000c3a9710c580a0000006e61c3af766520e282ac710d5804000000f09f9880710e581f00000071756f746527',
      '732022647122205c206261636b0a6e6c09746162006e756c7f710f580b000000c3bce188b45c753030343171106558060000007475706c65',
      '7371115d711228294b018571134b014b028671144b014b024b03877115284b014b024b034b0474711665580600000073686172656471175d',
      '7118285d71194b01616819580d0000007368617265642d737472696e67711a681a655805000000656d707479711b5d711c285d711d7d711e',
      '6558060000006e6573746564711f7d712058010000006b71217d712258020000006b3271235d71245d71255d7126616173734b0758070000',
      '00696e74206b65797127752e',
    ].join('') },
  { name: 'composite', proto: 4, hex: [
      '800495d6010000000000007d94288c04696e7473945d94284b004b014bff4d00014dffff4a000001004affffffff4a00ffffff4affffff7f',
      '4a000000808a0500000080008a060000000000018a0800000000000000808a090000000000000000018a090000000000000000c08a0d0000',
      '0000000000000000000010658c06666c6f617473945d9428470000000000000000473ff000000000000047c004000000000000474341c379',
      '37e08000473ee4f8b588e368f1473fb999999999999a47437b69b4ba630f35470000000000000001477fefffffffffffff658c06636f6e73',
      '7473945d942888894e658c0474657874945d94288c00948c0161948c0a61736369692074657874948c02c3a9948c0a6e61c3af766520e282',
      'ac948c04f09f9880948c1f71756f746527732022647122205c206261636b0a6e6c09746162006e756c7f948c0bc3bce188b45c7530303431',
      '94658c067475706c6573945d9428294b0185944b014b0286944b014b024b038794284b014b024b034b047494658c06736861726564945d94',
      '285d944b016168198c0d7368617265642d737472696e6794681a658c05656d707479945d94285d947d94658c066e6573746564947d948c01',
      '6b947d948c026b32945d945d945d94616173734b078c07696e74206b657994752e',
    ].join('') },
  { name: 'composite', proto: 5, hex: [
      '800595d6010000000000007d94288c04696e7473945d94284b004b014bff4d00014dffff4a000001004affffffff4a00ffffff4affffff7f',
      '4a000000808a0500000080008a060000000000018a0800000000000000808a090000000000000000018a090000000000000000c08a0d0000',
      '0000000000000000000010658c06666c6f617473945d9428470000000000000000473ff000000000000047c004000000000000474341c379',
      '37e08000473ee4f8b588e368f1473fb999999999999a47437b69b4ba630f35470000000000000001477fefffffffffffff658c06636f6e73',
      '7473945d942888894e658c0474657874945d94288c00948c0161948c0a61736369692074657874948c02c3a9948c0a6e61c3af766520e282',
      'ac948c04f09f9880948c1f71756f746527732022647122205c206261636b0a6e6c09746162006e756c7f948c0bc3bce188b45c7530303431',
      '94658c067475706c6573945d9428294b0185944b014b0286944b014b024b038794284b014b024b034b047494658c06736861726564945d94',
      '285d944b016168198c0d7368617265642d737472696e6794681a658c05656d707479945d94285d947d94658c066e6573746564947d948c01',
      '6b947d948c026b32945d945d945d94616173734b078c07696e74206b657994752e',
    ].join('') },
  { name: 'bytes', proto: 3, hex: [
      '80035d710028430071014302616271024290010000ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff007103652e',
    ].join('') },
  { name: 'bytes', proto: 4, hex: [
      '800495a3010000000000005d942843009443026162944290010000ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff0094652e',
    ].join('') },
  { name: 'bytes', proto: 5, hex: [
      '800595a3010000000000005d942843009443026162944290010000ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff',
      '00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff0094652e',
    ].join('') },
  { name: 'bytearray', proto: 5, hex: [
      '8005950e0000000000000096030000000000000078797a942e',
    ].join('') },
];

/** python3: json.dumps(base, separators=(',', ':'), ensure_ascii=False). */
const COMPOSITE_JSON = "{\"ints\":[0,1,255,256,65535,65536,-1,-256,2147483647,-2147483648,2147483648,1099511627776,-9223372036854775808,18446744073709551616,-1180591620717411303424,1267650600228229401496703205376],\"floats\":[0.0,1.0,-2.5,1e+16,1e-05,0.1,1.2345678901234568e+17,5e-324,1.7976931348623157e+308],\"consts\":[true,false,null],\"text\":[\"\",\"a\",\"ascii text\",\"\u00e9\",\"na\u00efve \u20ac\",\"\ud83d\ude00\",\"quote's \\\"dq\\\" \\\\ back\\nnl\\ttab\\u0000nul\u007f\",\"\u00fc\u1234\\\\u0041\"],\"tuples\":[[],[1],[1,2],[1,2,3],[1,2,3,4]],\"shared\":[[1],[1],\"shared-string\",\"shared-string\"],\"empty\":[[],{}],\"nested\":{\"k\":{\"k2\":[[[]]]}},\"7\":\"int key\"}";

const COMPOSITE_VALUE = {
  ints: [0, 1, 255, 256, 65535, 65536, -1, -256, 2147483647, -2147483648, 2147483648, 1099511627776,
    -(2n ** 63n), 2n ** 64n, -(2n ** 70n), 2n ** 100n],
  floats: [0, 1, -2.5, 1e16, 1e-5, 0.1, 1.2345678901234568e17, 5e-324, 1.7976931348623157e308],
  consts: [true, false, null],
  text: ['', 'a', 'ascii text', '\u00e9', 'na\u00efve \u20ac', '\u{1F600}', 'quote\'s "dq" \\ back\nnl\ttab\u0000nul\u007f', '\u00fc\u1234\\u0041'],
  tuples: [[], [1], [1, 2], [1, 2, 3], [1, 2, 3, 4]],
  shared: [[1], [1], 'shared-string', 'shared-string'],
  empty: [[], {}],
  nested: { k: { k2: [[[]]] } },
  7: 'int key',
};

describe('pickle codec', () => {
  describe('decodePickle on python3 vectors', () => {
    for (const v of PYTHON3_VECTORS.filter((x) => x.name === 'composite')) {
      it(`decodes protocol ${v.proto} (every plain opcode family of it)`, () => {
        expect(decodePickle(hex(v.hex))).to.deep.equal(COMPOSITE_VALUE);
        expect(pickleToJsonText(hex(v.hex))).to.equal(COMPOSITE_JSON);
      });
    }
    for (const v of PYTHON3_VECTORS.filter((x) => x.name !== 'composite')) {
      it(`decodes ${v.name} of protocol ${v.proto} as PickleBytes, which have no JSON form`, () => {
        const value = decodePickle(hex(v.hex));
        const all = (Array.isArray(value) ? value : [value]) as PickleBytes[];
        for (const b of all) expect(b).to.be.instanceOf(PickleBytes);
        expect(all.map((b) => toHex(b.bytes))).to.deep.equal(v.name === 'bytearray' ? ['78797a'] : ['', '6162', 'ff00'.repeat(200)]);
        expectCode(() => pickleToJsonText(hex(v.hex)), 'USERPORT_PICKLE_UNSUPPORTED');
      });
    }
  });

  describe('decodePickle on hand-written vectors (checked with python3 pickle.loads)', () => {
    const cases: [string, string, unknown][] = [
      ['STRING', "S'abc'\n.", 'abc'],
      ['STRING with escapes, UTF-8 bytes, and PUT', "S'caf\\xc3\\xa9'\np0\n.", 'caf\u00e9'],
      ['STRING in double quotes', 'S"it\'s"\n.', "it's"],
      ['SHORT_BINSTRING', '\x80\x02U\x03abcq\x01.', 'abc'],
      ['BINSTRING', '\x80\x02T\x03\x00\x00\x00abc.', 'abc'],
      ['INT 01 (protocol-0 True)', 'I01\n.', true],
      ['INT 00 (protocol-0 False)', 'I00\n.', false],
      ['INT beyond 32 bits (Python 2 on 64 bits)', 'I12345678901\n.', 12345678901],
      ['LONG', 'L123L\n.', 123],
      ['LONG beyond 2^53', 'L-99999999999999999999L\n.', -99999999999999999999n],
      ['FLOAT', 'F1.5\n.', 1.5],
      ['UNICODE with raw-unicode-escape', 'Vcaf\\u00e9 \\U0001f600\n.', 'caf\u00e9 \u{1F600}'],
      ['POP', '(K\x01K\x020l.', [1]],
      ['POP_MARK', 'K\x01(K\x021.', 1],
      ['DUP', 'K\x052\x86.', [5, 5]],
      ['POP of an empty frame pops the MARK', '(0N.', null],
      ['LONG_BINPUT, LONG_BINGET', '\x80\x02(X\x02\x00\x00\x00hir\x2c\x01\x00\x00j\x2c\x01\x00\x00l.', ['hi', 'hi']],
      ['BINUNICODE8', '\x80\x04\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi.', 'hi'],
      ['int dict keys become decimal text', '\x80\x02}q\x01(K\x01X\x01\x00\x00\x00aX\x01\x00\x00\x00bK\x02u.', { 1: 'a', b: 2 }],
      ['a "__proto__" key is data', '\x80\x02}X\x09\x00\x00\x00__proto__K\x01s.', JSON.parse('{"__proto__":1}')],
    ];
    for (const [name, pickle, expected] of cases) {
      it(name, () => {
        const value = decodePickle(lat(pickle));
        expect(value).to.deep.equal(expected);
        if (name.includes('__proto__')) expect(Object.keys(value as object)).to.deep.equal(['__proto__']);
      });
    }

    it('BINBYTES8 and a Python 2 str that is not UTF-8 are PickleBytes', () => {
      expect(toHex((decodePickle(lat('\x80\x04\x8e\x02\x00\x00\x00\x00\x00\x00\x00hi.')) as PickleBytes).bytes)).to.equal('6869');
      expect(toHex((decodePickle(lat("S'\\xff'\n.")) as PickleBytes).bytes)).to.equal('ff');
    });

    it('returns bytes that do not share memory with the input', () => {
      const input = lat('\x80\x03C\x02hi.');
      const out = decodePickle(input) as PickleBytes;
      input.fill(0);
      expect(toHex(out.bytes)).to.equal('6869');
    });

    it('keeps big ints exact: bigint beyond 2^53, exact decimal in JSON text', () => {
      expect(decodePickle(lat('L9007199254740991\n.'))).to.equal(9007199254740991);
      expect(decodePickle(lat('L9007199254740992\n.'))).to.equal(9007199254740992n);
      expect(decodePickle(encodePickle(2n ** 100n))).to.equal(2n ** 100n);
      expect(pickleToJsonText(encodePickle([2n ** 100n, -(2n ** 64n)]))).to.equal('[1267650600228229401496703205376,-18446744073709551616]');
    });

    it('decodes NaN, but JSON text refuses it', () => {
      expect(decodePickle(lat('Fnan\n.'))).to.be.NaN;
      expectCode(() => pickleToJsonText(lat('Fnan\n.')), 'USERPORT_PICKLE_UNSUPPORTED');
    });

    it('writes floats as Python repr does', () => {
      const cases: [number, string][] = [
        [0, '0.0'], [-0, '-0.0'], [1, '1.0'], [-2.5, '-2.5'], [1e15, '1000000000000000.0'], [1e16, '1e+16'],
        [0.0001, '0.0001'], [0.00001, '1e-05'], [1.5e-7, '1.5e-07'], [123.456, '123.456'], [1.5e300, '1.5e+300'],
        [5e-324, '5e-324'], [0.1 + 0.2, '0.30000000000000004'],
      ];
      for (const [x, text] of cases) expect(pyFloatRepr(x), String(x)).to.equal(text);
    });
  });

  describe('refusal of everything but plain values', () => {
    const cases: [string, Uint8Array, string, number][] = [
      ['the classic os.system payload', lat("cos\nsystem\n(S'echo hi'\ntR."), 'GLOBAL', 0],
      ['python3 protocol 2 datetime.date', hex('8002636461746574696d650a646174650a7100635f636f646563730a656e636f64650a7101580500000007c3a40101710258060000006c6174696e3171038671045271058571065271072e'), 'GLOBAL', 2],
      ['REDUCE', lat('\x80\x02N)R.'), 'REDUCE', 4],
      ['BUILD', lat('\x80\x02}}b.'), 'BUILD', 4],
      ['INST', lat('(i__main__\nX\n.'), 'INST', 1],
      ['OBJ', lat('\x80\x02(N)o.'), 'OBJ', 5],
      ['NEWOBJ', lat('\x80\x02N)\x81.'), 'NEWOBJ', 4],
      ['EXT1', lat('\x80\x02\x82\x01.'), 'EXT1', 2],
      ['PERSID', lat('Pfoo\n.'), 'PERSID', 0],
      ['BINPERSID', lat('\x80\x02NQ.'), 'BINPERSID', 3],
      ['STACK_GLOBAL', lat('\x80\x04\x8c\x02os\x8c\x06system\x93.'), 'STACK_GLOBAL', 14],
      ['EMPTY_SET', lat('\x80\x04\x8f.'), 'EMPTY_SET', 2],
      ['NEXT_BUFFER', lat('\x80\x05\x97.'), 'NEXT_BUFFER', 2],
    ];
    for (const [name, bytes, opcode, offset] of cases) {
      it(`refuses ${name} with the opcode and its offset`, () => {
        const e = expectCode(() => decodePickle(bytes), 'USERPORT_PICKLE_UNSUPPORTED');
        expect(e.opcode).to.equal(opcode);
        expect(e.offset).to.equal(offset);
        expect(e.message).to.contain(opcode);
      });
    }
  });

  describe('malformed and truncated input', () => {
    const cases: [string, Uint8Array, PickleErrorCode, string?][] = [
      ['empty input', lat(''), 'USERPORT_PICKLE_TRUNCATED'],
      ['no STOP', lat('\x80\x02N'), 'USERPORT_PICKLE_TRUNCATED'],
      ['a string longer than the input', lat('\x80\x02X\x05\x00\x00\x00ab'), 'USERPORT_PICKLE_TRUNCATED', 'BINUNICODE'],
      ['a 4 GiB length claim', lat('\x80\x02X\xff\xff\xff\xff.'), 'USERPORT_PICKLE_TRUNCATED', 'BINUNICODE'],
      ['an 8-byte length beyond 2^32', lat('\x80\x04\x8d\x00\x00\x00\x00\x01\x00\x00\x00.'), 'USERPORT_PICKLE_TRUNCATED', 'BINUNICODE8'],
      ['a text argument without newline', lat('I12'), 'USERPORT_PICKLE_TRUNCATED', 'INT'],
      ['bytes after STOP', lat('N.x'), 'USERPORT_PICKLE_INVALID', 'STOP'],
      ['two values at STOP', lat('NN.'), 'USERPORT_PICKLE_INVALID', 'STOP'],
      ['an open MARK at STOP', lat('(N.'), 'USERPORT_PICKLE_INVALID', 'STOP'],
      ['stack underflow', lat('a.'), 'USERPORT_PICKLE_INVALID', 'APPEND'],
      ['APPEND to a non-list', lat('NNa.'), 'USERPORT_PICKLE_INVALID', 'APPEND'],
      ['a missing memo entry', lat('\x80\x02h\x05.'), 'USERPORT_PICKLE_INVALID', 'BINGET'],
      ['an unknown opcode', lat('\xff.'), 'USERPORT_PICKLE_INVALID'],
      ['invalid UTF-8 in BINUNICODE', lat('\x80\x02X\x01\x00\x00\x00\xff.'), 'USERPORT_PICKLE_INVALID', 'BINUNICODE'],
      ['a lone surrogate', lat('V\\ud800\n.'), 'USERPORT_PICKLE_INVALID', 'UNICODE'],
      ['an unquoted STRING', lat('Sabc\n.'), 'USERPORT_PICKLE_INVALID', 'STRING'],
      ['an INT with a leading zero (Python 2 would read octal)', lat('I010\n.'), 'USERPORT_PICKLE_INVALID', 'INT'],
      ['a float dict key', lat('\x80\x02}G\x3f\xf0\x00\x00\x00\x00\x00\x00K\x01s.'), 'USERPORT_PICKLE_UNSUPPORTED', 'SETITEM'],
      ['int and string keys of the same text', lat('\x80\x02}(K\x01K\x01X\x01\x00\x00\x001K\x02u.'), 'USERPORT_PICKLE_INVALID', 'SETITEMS'],
      ['a list containing itself', lat('\x80\x02]q\x01h\x01a.'), 'USERPORT_PICKLE_INVALID'],
    ];
    for (const [name, bytes, code, opcode] of cases) {
      it(`refuses ${name}`, () => {
        const e = expectCode(() => decodePickle(bytes), code);
        if (opcode !== undefined) expect(e.opcode).to.equal(opcode);
      });
    }

    it('quotes a malformed integer with its control characters escaped (the text is the pickle\'s)', () => {
      const e = expectCode(() => decodePickle(lat('L1\x852\x1b[31mL\n.')), 'USERPORT_PICKLE_INVALID');
      expect(e.message).to.contain('not a decimal integer: "1\\u00852\\u001b[31m"');
      expect(e.message).to.not.match(/[\u0000-\u001f\u007f-\u009f]/);
    });

    it('refuses every truncation of a valid pickle as truncated', () => {
      for (const v of PYTHON3_VECTORS.filter((x) => x.name === 'composite' && (x.proto === 0 || x.proto === 2 || x.proto === 4))) {
        const full = hex(v.hex);
        for (let n = 0; n < full.length; n++) expectCode(() => decodePickle(full.subarray(0, n)), 'USERPORT_PICKLE_TRUNCATED');
      }
    });

    it('throws only PickleError on corrupted input (seeded byte flips)', () => {
      let seed = 12345;
      const rand = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
      const sources = PYTHON3_VECTORS.map((v) => hex(v.hex));
      for (let i = 0; i < 3000; i++) {
        const b = Uint8Array.from(sources[rand(sources.length)]!);
        for (let k = 1 + rand(3); k > 0; k--) b[rand(b.length)] = rand(256);
        try {
          decodePickle(b);
          pickleToJsonText(b);
        } catch (e) {
          expect(e, String(e)).to.be.instanceOf(PickleError);
        }
      }
    });
  });

  describe('limits', () => {
    const nested = (depth: number) => lat(`\x80\x02${']'.repeat(depth)}${'a'.repeat(depth - 1)}.`);

    it('bounds nesting depth', () => {
      expect(JSON.stringify(decodePickle(nested(DEFAULT_PICKLE_LIMITS.maxDepth)))).to.have.length(2 * DEFAULT_PICKLE_LIMITS.maxDepth);
      expectCode(() => decodePickle(nested(DEFAULT_PICKLE_LIMITS.maxDepth + 1)), 'USERPORT_PICKLE_LIMIT');
      expectCode(() => decodePickle(nested(100_000)), 'USERPORT_PICKLE_LIMIT');
      expectCode(() => pickleToJsonText(nested(100_000)), 'USERPORT_PICKLE_LIMIT');
    });

    it('bounds the input size', () => {
      expectCode(() => decodePickle(lat('N.'), { maxBytes: 1 }), 'USERPORT_PICKLE_LIMIT');
    });

    it('bounds the expansion of memo references (billion laughs)', () => {
      // memo 1 = [1]; memo k+1 = [memo k, memo k]: 2^40 leaves once expanded.
      let p = '\x80\x02]q\x01K\x01a0';
      for (let k = 1; k <= 40; k++) p += `(h${String.fromCharCode(k)}h${String.fromCharCode(k)}lq${String.fromCharCode(k + 1)}0`;
      p += `h${String.fromCharCode(41)}.`;
      expectCode(() => decodePickle(lat(p)), 'USERPORT_PICKLE_LIMIT');
      expectCode(() => pickleToJsonText(lat(p)), 'USERPORT_PICKLE_LIMIT');
    });

    it('bounds text repeated through the memo', () => {
      const p = `\x80\x02X\x00\x00\x10\x00${'x'.repeat(0x100000)}q\x010(${'h\x01'.repeat(50)}l.`;
      expect((decodePickle(lat(p)) as string[]).length).to.equal(50);
      expectCode(() => decodePickle(lat(p), { maxTextLength: 10 * 0x100000 }), 'USERPORT_PICKLE_LIMIT');
    });

    it('bounds integer size', () => {
      expectCode(() => decodePickle(lat(`L${'9'.repeat(5000)}\n.`)), 'USERPORT_PICKLE_LIMIT');
      expectCode(() => decodePickle(lat(`\x80\x02\x8b\xff\xff\x00\x00${'\x01'.repeat(0xffff)}.`)), 'USERPORT_PICKLE_LIMIT');
    });

    it('decodes a list of 200000 items built by one LIST opcode', () => {
      expect((decodePickle(lat(`(${'N'.repeat(200_000)}l.`)) as unknown[]).length).to.equal(200_000);
    });
  });

  describe('picklefield text', () => {
    it('decodes and writes the Sentry 9 example byte-exactly', () => {
      const field = 'gAJYDQAAAEV1cm9wZS9WaWVubmFxAS4=';
      expect(decodePickledField(field)).to.equal('Europe/Vienna');
      expect(pickledFieldToJsonText(field)).to.equal('"Europe/Vienna"');
      expect(encodePickledField('Europe/Vienna')).to.equal(field);
    });

    it('refuses text that is not base64', () => {
      expectCode(() => decodePickledField('gAJYDQ*AAEV1'), 'USERPORT_PICKLE_INVALID');
    });

    it('inflates zlib-compressed fields only through the given inflate', () => {
      const compressed = 'eJxrYOrQAwADSAE5'; // base64(zlib.compress(pickle.dumps(True, 2)))
      expectCode(() => decodePickledField(compressed), 'USERPORT_PICKLE_UNSUPPORTED');
      expect(decodePickledField(compressed, { inflate: () => lat('\x80\x02\x88.') })).to.equal(true);
    });
  });

  describe('encodePickle writes Python 2.7 cPickle protocol-2 bytes', () => {
    const P = '8002';
    const S = '2e';
    const cases: [string, PickleInput, string][] = [
      ['None', null, `${P}4e${S}`],
      ['True', true, `${P}88${S}`],
      ['False', false, `${P}89${S}`],
      ['empty unicode: not memoized (length < 2)', '', `${P}5800000000${S}`],
      ['one-character unicode: not memoized', 'a', `${P}580100000061${S}`],
      ['one non-ASCII character: not memoized (one code point)', '\u00e9', `${P}5802000000c3a9${S}`],
      ['one astral character: not memoized (UCS-4 length 1)', '\u{1F600}', `${P}5804000000f09f9880${S}`],
      ['two characters: BINPUT 1', 'ab', `${P}58020000006162` + `7101${S}`],
      ['non-ASCII unicode as UTF-8', 'na\u00efve', `${P}58060000006e61c3af7665` + `7101${S}`],
      ['0: BININT1', 0, `${P}4b00${S}`],
      ['255: BININT1', 255, `${P}4bff${S}`],
      ['256: BININT2', 256, `${P}4d0001${S}`],
      ['65535: BININT2', 65535, `${P}4dffff${S}`],
      ['65536: BININT', 65536, `${P}4a00000100${S}`],
      ['-1: BININT', -1, `${P}4affffffff${S}`],
      ['2^31-1: BININT', 2 ** 31 - 1, `${P}4affffff7f${S}`],
      ['-2^31: BININT', -(2 ** 31), `${P}4a00000080${S}`],
      ['2^31: INT text (a C long beyond BININT)', 2 ** 31, `${P}49${toHex(lat('2147483648\n'))}${S}`],
      ['-2^31-1: INT text', -(2 ** 31) - 1, `${P}49${toHex(lat('-2147483649\n'))}${S}`],
      ['-2^63: INT text (still a C long)', -(2n ** 63n), `${P}49${toHex(lat('-9223372036854775808\n'))}${S}`],
      ['2^63: LONG1', 2n ** 63n, `${P}8a090000000000000080` + `00${S}`],
      ['-2^63-1: LONG1', -(2n ** 63n) - 1n, `${P}8a09ffffffffffffff7fff${S}`],
      ['1.5: BINFLOAT big-endian', 1.5, `${P}473ff8000000000000${S}`],
      ['0.1: BINFLOAT', 0.1, `${P}473fb999999999999a${S}`],
      ['PickleFloat(1): BINFLOAT', new PickleFloat(1), `${P}473ff0000000000000${S}`],
      ['PickleBytes: SHORT_BINSTRING', new PickleBytes(lat('ab')), `${P}5502` + `61627101${S}`],
      ['empty list at top: not memoized (the deepcopy is referenced once)', [], `${P}5d${S}`],
      ['empty dict at top: not memoized', {}, `${P}7d${S}`],
      ['one-item list: APPEND', [1], `${P}5d71014b0161${S}`],
      ['two-item list: MARK APPENDS', [1, 2], `${P}5d7101284b014b0265${S}`],
      ['empty list in a list: memoized (the list iterator holds it too)', [[]], `${P}5d71015d710261${S}`],
      ['empty dict in a list: memoized', [{}], `${P}5d71017d710261${S}`],
      ['empty dict as a dict value: not memoized (PyDict_Next borrows)', { a: {} }, `${P}7d71015801000000617d73${S}`],
      ['one-key dict: SETITEM', { secret: 'ABC' }, `${P}7d7101` + `5806000000${toHex(lat('secret'))}7102` + `5803000000${toHex(lat('ABC'))}7103` + `73${S}`],
      ['two-key dict: MARK SETITEMS', { salt: 'ab', used: 0 }, `${P}7d710128` + `5804000000${toHex(lat('salt'))}7102` + `58020000006162` + `7103` + `5804000000${toHex(lat('used'))}7104` + `4b00` + `75${S}`],
      ['nested', { devices: [{ name: 'k' }] }, `${P}7d71015807000000${toHex(lat('devices'))}7102` + `5d7103` + `7d7104` + `5804000000${toHex(lat('name'))}7105` + `58010000006b` + `73` + `61` + `73${S}`],
    ];
    for (const [name, value, expected] of cases) {
      it(name, () => {
        expect(toHex(encodePickle(value))).to.equal(expected);
      });
    }

    it('writes Python 2 str for strings: `strings: "str"`', () => {
      expect(toHex(encodePickle({ secret: 'ABC' }, { strings: 'str' }))).to.equal(
        `${P}7d71015506${toHex(lat('secret'))}71025503${toHex(lat('ABC'))}710373${S}`);
      expect(toHex(encodePickle('x'.repeat(256), { strings: 'str' }))).to.equal(`${P}5400010000${'78'.repeat(256)}7101${S}`);
    });

    it('writes a list of 1001 items as one batch of 1000 (MARK APPENDS) and one APPEND', () => {
      const items = new Array<null>(1001).fill(null);
      expect(toHex(encodePickle(items))).to.equal(`${P}5d710128${'4e'.repeat(1000)}65` + `4e61${S}`);
      expect(toHex(encodePickle(items.slice(0, 1000)))).to.equal(`${P}5d710128${'4e'.repeat(1000)}65${S}`);
    });

    it('writes dicts in batches of 1000, with batch_dict_exact\'s empty last batch at a multiple of 1000', () => {
      const dict = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, null]));
      const thousand = encodePickle(dict(1000));
      expect(toHex(thousand.subarray(-4))).to.equal('7528752e'); // SETITEMS MARK SETITEMS STOP
      const more = encodePickle(dict(1001));
      // The last batch holds one item and still uses MARK ... SETITEMS; k1000 is memo id 1002 (LONG_BINPUT).
      expect(toHex(more.subarray(-20))).to.equal(`7528${toHex(lat('X\x05\x00\x00\x00k1000'))}72ea0300004e752e`);
      expect(decodePickle(more)).to.deep.equal(dict(1001));
    });

    it('switches from BINPUT to LONG_BINPUT at memo id 256', () => {
      const strings = Array.from({ length: 300 }, (_, i) => `s${i}`);
      const b = toHex(encodePickle(strings));
      expect(b).to.contain(`${toHex(lat('X\x04\x00\x00\x00s253'))}71ff`); // id 255 (the list is id 1)
      expect(b).to.contain(`${toHex(lat('X\x04\x00\x00\x00s254'))}7200010000`); // id 256
      expect(decodePickle(encodePickle(strings))).to.deep.equal(strings);
    });

    it('round-trips nested values', () => {
      const value = { a: [1, -1, 70000, 2 ** 40, 2n ** 70n, 0.5, true, false, null, '', 'x', 'caf\u00e9', { b: [[], {}] }], '\u20ac': 'y' };
      expect(decodePickle(encodePickle(value))).to.deep.equal(value);
      expect(decodePickle(encodePickle(value, { strings: 'str' }))).to.deep.equal(value);
    });

    it('refuses what Python 2 could not have stored, or JSON cannot carry', () => {
      for (const bad of [NaN, Infinity, undefined, () => 1, new Date(0), new Map(), '\ud800'] as unknown[]) {
        expectCode(() => encodePickle(bad as PickleInput), 'USERPORT_PICKLE_UNSUPPORTED');
      }
      let deep: PickleInput = [];
      for (let i = 0; i < 200; i++) deep = [deep];
      expectCode(() => encodePickle(deep), 'USERPORT_PICKLE_LIMIT');
    });
  });
});
