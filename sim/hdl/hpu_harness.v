// Test harness around the generated HPU: the clock, stimulus and result rings
// live in Verilog so that Python (cocotb) only wakes up once per refill, not
// once per cycle. The harness plays the host: it streams scores, and answers the
// HPU's requests for kept keys' values from its value ring (the KV cache), in
// the order asked. It also streams blocks of router logits and keeps the routed
// positions the HPU answers with. Random idle gaps on the score and value streams and
// back-pressure on the result stream come from two xorshift generators seeded
// by the testbench.
`timescale 1ns/1ps
module hpu_harness #(
    parameter SCORE_BITS = 1,
    parameter VALUE_BITS = 1,
    parameter INDEX_BITS = 1,        // the request's key index
    parameter RESULT_BITS = 1,
    parameter KEY_DEPTH = 4096,      // power of two
    parameter LOGIT_BITS = 1,        // a router logit beat: {last, logit}
    parameter POSITION_BITS = 1,     // a routed beat: {last, position}
    parameter LOGIT_DEPTH = 4096,    // power of two
    parameter ROW_DEPTH = 64         // power of two
);
    // The testbench reaches only the signals marked public_flat_rw below: sim/runner.py turns off
    // the flag that makes every signal public (cocotb's runner sets it), so that the HPU itself is
    // optimized by Verilator as it would be without cocotb.
    reg clk /*verilator public_flat_rw*/ = 1'b0;
    always #5 clk = ~clk;
    // Reset starts low and the testbench pulses it: the generated Verilog's combinational
    // blocks evaluate only on a change of their inputs, so a reset held from time 0
    // would leave next-state logic unevaluated (x) through the reset.
    reg rst /*verilator public_flat_rw*/ = 1'b0;
    reg gate_open /*verilator public_flat_rw*/ = 1'b0;

    // Written by the testbench: key k of the run (rows one after another) at k mod KEY_DEPTH.
    reg [SCORE_BITS-1:0] keys [0:KEY_DEPTH-1] /*verilator public_flat_rw*/;
    reg [VALUE_BITS-1:0] values [0:KEY_DEPTH-1] /*verilator public_flat_rw*/;
    reg [31:0] keys_loaded /*verilator public_flat_rw*/ = 0;
    reg [31:0] rows_read /*verilator public_flat_rw*/ = 0;
    reg [31:0] rows_expected /*verilator public_flat_rw*/ = 0;
    reg [31:0] gap_seed /*verilator public_flat_rw*/ = 32'h1234_5678;
    reg [31:0] stall_seed /*verilator public_flat_rw*/ = 32'h8765_4321;
    reg [8:0] gap_per_256 /*verilator public_flat_rw*/ = 0;
    reg [8:0] stall_per_256 /*verilator public_flat_rw*/ = 0;
    reg dump /*verilator public_flat_rw*/ = 1'b0;

    // Token routing: logit l of the run (blocks one after another) at l mod LOGIT_DEPTH, and the
    // routed positions as they come out, in the same ring discipline.
    reg [LOGIT_BITS-1:0] logits [0:LOGIT_DEPTH-1] /*verilator public_flat_rw*/;
    reg [31:0] logits_loaded /*verilator public_flat_rw*/ = 0;
    reg [31:0] logits_sent /*verilator public_flat_rw*/ = 0;
    reg [POSITION_BITS-1:0] routed [0:LOGIT_DEPTH-1] /*verilator public_flat_rw*/;
    reg [31:0] routed_seen /*verilator public_flat_rw*/ = 0;
    reg [31:0] routed_read /*verilator public_flat_rw*/ = 0;
    reg [31:0] blocks_seen /*verilator public_flat_rw*/ = 0;
    reg [31:0] blocks_expected /*verilator public_flat_rw*/ = 0;

    // Kept by the harness.
    reg [31:0] keys_sent /*verilator public_flat_rw*/ = 0;
    // The first key of the row being requested: keys before it will not be asked for again.
    reg [31:0] row_base /*verilator public_flat_rw*/ = 0;
    reg [31:0] values_sent /*verilator public_flat_rw*/ = 0;
    // The HPU's cycle count at the end of the cycle of the last result or routed position taken: the
    // run's length, whenever the testbench wakes up to notice.
    reg [31:0] done_cycle /*verilator public_flat_rw*/ = 0;
    // Lengths of the rows whose scores went out, for the request side (FIFO), and the requests
    // taken but not yet answered (FIFO of global key positions). Both hold FIFO_DEPTH entries; the
    // request pointers have one bit more, so that full and empty differ.
    localparam FIFO_DEPTH = 16;     // power of two, more than the rows and requests in flight
    localparam FIFO_BITS = $clog2(FIFO_DEPTH);
    reg [31:0] row_len [0:FIFO_DEPTH-1];
    reg [FIFO_BITS-1:0] len_head = 0, len_tail = 0;
    reg [31:0] row_count = 0;
    reg [31:0] asked [0:FIFO_DEPTH-1];
    reg [FIFO_BITS:0] ask_head = 0, ask_tail = 0;
    reg [31:0] rows_seen /*verilator public_flat_rw*/ = 0;
    reg [RESULT_BITS-1:0] results [0:ROW_DEPTH-1] /*verilator public_flat_rw*/;
    reg [31:0] result_cycle [0:ROW_DEPTH-1] /*verilator public_flat_rw*/;
    reg [31:0] gap_rng = 32'h1, stall_rng = 32'h1;

    wire keys_ready, results_valid, busy, overflow, requests_valid, values_ready;
    wire [INDEX_BITS:0] requests_payload;   // {last, index}
    wire [RESULT_BITS-1:0] results_payload;
    wire [31:0] cycles /*verilator public_flat_rw*/;
    wire [31:0] rows;
    wire logits_ready, routed_valid;
    wire [POSITION_BITS-1:0] routed_payload;
    wire logits_valid = (logits_sent != logits_loaded) && !(gap_rng[23:16] < gap_per_256);
    wire routed_ready = (routed_seen - routed_read) < LOGIT_DEPTH && !(stall_rng[15:8] < stall_per_256);

    wire keys_valid = (keys_sent != keys_loaded) && !(gap_rng[7:0] < gap_per_256);
    wire [FIFO_BITS:0] outstanding = ask_tail - ask_head;   // as wide as the pointers, so it wraps with them
    wire requests_ready = outstanding < FIFO_DEPTH;
    wire values_valid = (ask_tail != ask_head) && !(gap_rng[15:8] < gap_per_256);
    wire ring_has_room = (rows_seen - rows_read) < ROW_DEPTH;
    wire results_ready = ring_has_room && !(stall_rng[7:0] < stall_per_256);

    // Levels the testbench waits on.
    wire need_keys /*verilator public_flat_rw*/;
    assign need_keys = (keys_loaded - row_base) <= KEY_DEPTH / 4;
    wire need_logits /*verilator public_flat_rw*/;
    assign need_logits = (logits_loaded - logits_sent) <= LOGIT_DEPTH / 4;
    wire results_waiting /*verilator public_flat_rw*/;
    assign results_waiting = (rows_seen - rows_read) >= ROW_DEPTH / 2 || (routed_seen - routed_read) >= LOGIT_DEPTH / 2;
    wire done /*verilator public_flat_rw*/;
    assign done = (rows_seen == rows_expected) && (blocks_seen == blocks_expected)
                  && (rows_expected != 0 || blocks_expected != 0);

    hpu dut (
        .clk(clk), .rst(rst),
        .scores__payload(keys[keys_sent[$clog2(KEY_DEPTH)-1:0]]), .scores__valid(keys_valid), .scores__ready(keys_ready),
        .requests__payload(requests_payload), .requests__valid(requests_valid), .requests__ready(requests_ready),
        .values__payload(values[asked[ask_head[FIFO_BITS-1:0]][$clog2(KEY_DEPTH)-1:0]]), .values__valid(values_valid),
        .values__ready(values_ready),
        .results__payload(results_payload), .results__valid(results_valid), .results__ready(results_ready),
        .logits__payload(logits[logits_sent[$clog2(LOGIT_DEPTH)-1:0]]), .logits__valid(logits_valid),
        .logits__ready(logits_ready),
        .routed__payload(routed_payload), .routed__valid(routed_valid), .routed__ready(routed_ready),
        .gate_open(gate_open), .busy(busy), .overflow(overflow), .cycles(cycles), .rows(rows)
    );

    integer i;
    initial begin
        for (i = 0; i < KEY_DEPTH; i = i + 1) begin
            keys[i] = {SCORE_BITS{1'b0}};
            values[i] = {VALUE_BITS{1'b0}};
        end
        for (i = 0; i < FIFO_DEPTH; i = i + 1) asked[i] = 0;
        for (i = 0; i < LOGIT_DEPTH; i = i + 1) logits[i] = {LOGIT_BITS{1'b0}};
    end

    function [31:0] xorshift(input [31:0] x);
        reg [31:0] y;
        begin
            y = x ^ (x << 13);
            y = y ^ (y >> 17);
            xorshift = y ^ (y << 5);
        end
    endfunction

    always @(posedge clk) begin
        if (rst) begin
            gap_rng <= gap_seed | 1;
            stall_rng <= stall_seed | 1;
        end else begin
            // A generator steps only when it is used: without gaps or stalls the harness costs
            // the simulator nothing per cycle beyond the handshakes.
            if (gap_per_256 != 0) gap_rng <= xorshift(gap_rng);
            if (stall_per_256 != 0) stall_rng <= xorshift(stall_rng);
        end
        if (keys_valid && keys_ready) begin
            keys_sent <= keys_sent + 1;
            row_count <= row_count + 1;
            // The score's last bit (its top bit) ends the row: queue the row's length.
            if (keys[keys_sent[$clog2(KEY_DEPTH)-1:0]][SCORE_BITS-1]) begin
                row_len[len_tail] <= row_count + 1;
                len_tail <= len_tail + 1;
                row_count <= 0;
            end
        end
        if (requests_valid && requests_ready) begin
            asked[ask_tail[FIFO_BITS-1:0]] <= row_base + requests_payload[INDEX_BITS-1:0];
            ask_tail <= ask_tail + 1;
            if (requests_payload[INDEX_BITS]) begin
                row_base <= row_base + row_len[len_head];
                len_head <= len_head + 1;
            end
        end
        if (values_valid && values_ready) begin
            ask_head <= ask_head + 1;
            values_sent <= values_sent + 1;
        end
        if (results_valid && results_ready) begin
            results[rows_seen[$clog2(ROW_DEPTH)-1:0]] <= results_payload;
            result_cycle[rows_seen[$clog2(ROW_DEPTH)-1:0]] <= cycles;
            rows_seen <= rows_seen + 1;
        end
        if (logits_valid && logits_ready) logits_sent <= logits_sent + 1;
        if ((results_valid && results_ready) || (routed_valid && routed_ready)) done_cycle <= cycles + 1;
        if (routed_valid && routed_ready) begin
            routed[routed_seen[$clog2(LOGIT_DEPTH)-1:0]] <= routed_payload;
            routed_seen <= routed_seen + 1;
            if (routed_payload[POSITION_BITS-1]) blocks_seen <= blocks_seen + 1;
        end
    end

    // Waveforms: +vcd=PATH dumps the HPU's hierarchy only, and only while `dump` is high.
    reg [8*1024-1:0] vcd_path;
    initial begin
        if ($value$plusargs("vcd=%s", vcd_path)) begin
            $dumpfile(vcd_path);
            $dumpvars(0, dut);
            $dumpoff;
        end
    end
    always @(posedge dump) $dumpon;
    always @(negedge dump) $dumpoff;
endmodule
